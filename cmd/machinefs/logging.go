package main

import (
	"fmt"
	"io"
	"log/syslog"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// syslogSocket is where the local syslog daemon (or journald) listens.
const syslogSocket = "/dev/log"

// openLog opens where the daemon logs (mountopts.Options.Log). detached is
// a daemon the mount helper started: its stderr goes to /dev/null once it
// has mounted, so without log= it logs to syslog, or to
// STATEDIR/machinefs.log where there is no syslog. reopen, for SIGHUP,
// reopens a log file so that logrotate can move it away; for the other
// targets it does nothing.
func openLog(where string, detached bool, stateDir string) (w io.Writer, reopen func() error, err error) {
	noop := func() error { return nil }
	if where == "" && detached {
		where = "syslog"
		if fi, err := os.Stat(syslogSocket); err != nil || fi.Mode()&os.ModeSocket == 0 {
			where = filepath.Join(stateDir, "machinefs.log")
		}
	}
	switch where {
	case "", "stderr":
		return os.Stderr, noop, nil
	case "syslog":
		s, err := syslog.New(syslog.LOG_INFO|syslog.LOG_DAEMON, "machinefs")
		if err != nil {
			return nil, nil, fmt.Errorf("log=syslog: %w", err)
		}
		return syslogWriter{s}, noop, nil
	}
	f := &logFile{path: where}
	if err := f.reopen(); err != nil {
		return nil, nil, err
	}
	return f, f.reopen, nil
}

// syslogWriter sends each line of the text handler at the syslog priority
// of its slog level, so `journalctl -p warning` finds warnings.
type syslogWriter struct{ w *syslog.Writer }

func (s syslogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSuffix(string(p), "\n")
	var err error
	switch slogLevel(line) {
	case "ERROR":
		err = s.w.Err(line)
	case "WARN":
		err = s.w.Warning(line)
	case "DEBUG":
		err = s.w.Debug(line)
	default:
		err = s.w.Info(line)
	}
	return len(p), err
}

// slogLevel is the level of a line of slog's text handler
// ("time=... level=WARN msg=...").
func slogLevel(line string) string {
	_, rest, ok := strings.Cut(line, " level=")
	if !ok {
		return ""
	}
	level, _, _ := strings.Cut(rest, " ")
	return level
}

// logFile is a log file that can be reopened under its name while the
// daemon writes to it: logrotate renames it and sends SIGHUP.
type logFile struct {
	path string
	mu   sync.Mutex
	f    *os.File
}

func (l *logFile) reopen() error {
	if err := os.MkdirAll(filepath.Dir(l.path), 0o755); err != nil {
		return fmt.Errorf("log file: %w", err)
	}
	// 0600: the log holds who ran which command (uid, pid) and config keys.
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("log file: %w", err)
	}
	l.mu.Lock()
	old := l.f
	l.f = f
	l.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

func (l *logFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Write(p)
}
