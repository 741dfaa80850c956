package uml_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/machinefs/machinefs/machine"
	umlh "github.com/machinefs/machinefs/tests/harness/uml"
)

// floodInit is a guest /init that writes to /proc/mconsole one write of
// two lines, 1 MiB without a newline (tr writes it in pieces, each a
// notification UML cuts to 512 bytes), then 1,000 notifications at once,
// then, once a second has refilled the rate limit, "flood-done".
const floodInit = `#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
echo booted > /proc/mconsole
echo -e 'first of two\nsecond of two' > /proc/mconsole
yes | head -c 1048576 | tr -d '\n' > /proc/mconsole
i=0
while [ $i -lt 1000 ]; do echo "flood $i" > /proc/mconsole; i=$((i+1)); done
sleep 1
echo flood-done > /proc/mconsole
while :; do sleep 2147483647 & wait $!; done
`

// A guest's USER_NOTIFY lines are bounded (UML cuts a write to 512 bytes;
// a write of several lines gives several events) and a flood of them is
// rate-limited, the dropped ones counted in notify-dropped events.
func TestUMLNotifyBounded(t *testing.T) {
	umlh.Skip(t)
	root, dir := umlh.Root(t), umlh.Dir(t)
	if err := os.WriteFile(filepath.Join(root, "init"), []byte(floodInit), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"yes", "head", "tr"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
	cfg := config{"uml.root": "hostfs:" + root, "uml.dir": dir, "uml.mem": "64M", "uml.init": "/init"}
	r := &recorder{}
	m := newMachine(t, cfg, r)
	defer m.Close()
	ctx := context.Background()
	if err := m.Power(ctx, machine.Command{Verb: "on"}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := m.Power(ctx, machine.Command{Verb: "off"}); err != nil {
			t.Errorf("off: %v", err)
		}
		waitFor(t, "guest off", func() bool { return r.last().Power == machine.PowerOff })
	}()
	count := func() (long, two, passed, dropped int) {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, e := range r.events {
			switch {
			case len(e[1]) > 512:
				t.Fatalf("an event of %d bytes: %s %.80q...", len(e[1]), e[0], e[1])
			case e[0] == "notify" && strings.HasPrefix(e[1], "yyyy"):
				long++
			case e[0] == "notify" && (e[1] == "first of two" || e[1] == "second of two"):
				two++
			case e[0] == "notify" && strings.HasPrefix(e[1], "flood "):
				passed++
			case e[0] == "notify-dropped":
				var n int
				if _, err := fmt.Sscanf(e[1], "%d", &n); err != nil || n <= 0 {
					t.Fatalf("drop event %q", e[1])
				}
				dropped += n
			}
		}
		return
	}
	waitFor(t, "notify flood-done", func() bool { return r.hasEvent("notify", "flood-done") })
	waitFor(t, "1000 flood lines passed or said dropped", func() bool { l, _, p, d := count(); return l+p+d >= 1000 })
	long, two, passed, dropped := count()
	t.Logf("%d flood lines passed, %d dropped", passed, dropped)
	// Every write is a notification: the pieces of the long one, the
	// flood and flood-done were passed on or counted dropped.
	if long == 0 || two != 2 || passed == 0 || dropped == 0 || long+passed+dropped < 1000 {
		t.Fatalf("%d pieces of the long write, %d of the two lines, %d flood lines passed, %d dropped: want >0, 2, >0, >0, 1000 at least in all", long, two, passed, dropped)
	}
}
