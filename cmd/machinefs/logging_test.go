package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// Every level slog writes is recognised, so syslog gets it at its priority.
func TestSlogLevel(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	log.Debug("d", "note", "level=ERROR inside a value")
	log.Info("i")
	log.Warn("w")
	log.Error("e")
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		got = append(got, slogLevel(l))
	}
	if strings.Join(got, " ") != "DEBUG INFO WARN ERROR" {
		t.Fatalf("levels %q from:\n%s", got, buf.String())
	}
}
