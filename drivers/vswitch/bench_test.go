package vswitch

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// BenchmarkCreateDelete100 creates 100 switches with one TAP each and
// deletes them again, three ways in one run, each in its own fresh
// namespace:
//
//   - shell: a script of `ip` commands run by `ip netns exec` (bridge add,
//     up, tuntap add, master+up; then del TAP, del bridge);
//   - mgr-serial: Manager.Create, AddTap, then Delete one switch at a time
//     (one RTM_DELLINK by group per switch);
//   - mgr-batch: the same, but one Delete of all 100 (one RTM_DELLINK).
//
// Ratios are shell time over Manager time. Run with -benchtime=1x.
func BenchmarkCreateDelete100(b *testing.B) {
	const n = 100
	ctx := context.Background()
	var shell, serial, batch time.Duration
	for b.Loop() {
		shell += timeShell(b, n)
		serial += timeManager(b, ctx, n, false)
		batch += timeManager(b, ctx, n, true)
	}
	per := func(d time.Duration) float64 { return float64(d.Milliseconds()) / float64(b.N) }
	b.ReportMetric(per(shell), "shell-ms")
	b.ReportMetric(per(serial), "mgr-serial-ms")
	b.ReportMetric(per(batch), "mgr-batch-ms")
	b.ReportMetric(float64(shell)/float64(serial), "x-serial")
	b.ReportMetric(float64(shell)/float64(batch), "x-batch")
}

func timeShell(b *testing.B, n int) time.Duration {
	b.Helper()
	e := setupBare(b)
	var sb strings.Builder
	sb.WriteString("set -e\n")
	for i := range n {
		fmt.Fprintf(&sb, "ip link add mfvs%d type bridge\nip link set mfvs%d up\n", i, i)
		fmt.Fprintf(&sb, "ip tuntap add dev mfvs%dt0 mode tap\nip link set mfvs%dt0 master mfvs%d up\n", i, i, i)
	}
	for i := range n {
		fmt.Fprintf(&sb, "ip link del mfvs%dt0\nip link del mfvs%d\n", i, i)
	}
	start := time.Now()
	out, err := exec.Command("ip", "netns", "exec", e.ns.Name, "sh", "-c", sb.String()).CombinedOutput()
	d := time.Since(start)
	if err != nil {
		b.Fatalf("shell: %v: %s", err, out)
	}
	return d
}

func timeManager(b *testing.B, ctx context.Context, n int, together bool) time.Duration {
	b.Helper()
	e := setupBare(b)
	m := e.manager(b)
	names := make([]string, n)
	start := time.Now()
	for i := range n {
		names[i] = fmt.Sprintf("mfvm%d", i)
		if _, err := m.Create(ctx, names[i]); err != nil {
			b.Fatal(err)
		}
		if _, err := m.AddTap(ctx, names[i], "", ""); err != nil {
			b.Fatal(err)
		}
	}
	if together {
		if err := m.Delete(ctx, names...); err != nil {
			b.Fatal(err)
		}
	} else {
		for _, name := range names {
			if err := m.Delete(ctx, name); err != nil {
				b.Fatal(err)
			}
		}
	}
	d := time.Since(start)
	if l, err := e.h.LinkList(); err != nil || len(l) != 1 { // lo
		b.Fatalf("after delete: %d links, %v", len(l), err)
	}
	return d
}

// setupBare is setup without a Manager.
func setupBare(b *testing.B) *env {
	e := setup(b)
	e.m.Close()
	e.m = nil
	return e
}
