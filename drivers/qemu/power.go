package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/drivers/internal/tap"
	"github.com/machinefs/machinefs/internal/procfs"
	"github.com/machinefs/machinefs/machine"
)

// Power implements machine.PowerController. Each verb is one or two QMP
// commands; what they lead to (RESET, STOP, RESUME, the process's end)
// is reported from QEMU's events, so a command and the guest's own doing
// are told the same way.
func (m *Machine) Power(ctx context.Context, cmd machine.Command) error {
	switch cmd.Verb {
	case "on":
		return m.powerOn(ctx)
	case "resume":
		if _, err := m.running(); err != nil {
			return m.powerOn(ctx)
		}
		return m.run(ctx, "cont", "guest resumed (cont)")
	case "pause":
		return m.run(ctx, "stop", "guest paused (stop)")
	case "reboot", "reset":
		return m.reset(ctx, cmd.Verb)
	case "off":
		return m.quit(ctx, "off")
	case "poweroff":
		if cmd.Force {
			return m.quit(ctx, "poweroff force")
		}
		return m.poweroff(ctx)
	}
	return machine.Errorf(syscall.ENOTSUP, "qemu does not know %q", cmd.Verb)
}

// run issues one QMP command whose event reports the result, with why
// as that report's reason.
func (m *Machine) run(ctx context.Context, cmd, why string) error {
	g, err := m.running()
	if err != nil {
		return err
	}
	m.expectEvent(g, why)
	_, err = g.qmp.execute(ctx, cmd, nil)
	return err
}

// reset resets the guest (system_reset) and lets a paused or panicked one
// run again: reboot and reset are both a hard reset, QEMU has no other.
func (m *Machine) reset(ctx context.Context, verb string) error {
	g, err := m.running()
	if err != nil {
		return err
	}
	m.mu.Lock()
	stopped := g.paused || g.crashed != ""
	m.mu.Unlock()
	m.expectEvent(g, "guest reset ("+verb+": system_reset)")
	// QEMU resets in its main loop, after it answered: a stopped guest
	// can continue only once the RESET event says it was reset.
	reset := g.qmp.subscribe("RESET")
	defer g.qmp.unsubscribe(reset)
	if _, err := g.qmp.execute(ctx, "system_reset", nil); err != nil {
		return err
	}
	if !stopped {
		return nil
	}
	if err := waitEvent(ctx, g.qmp, reset, m.s.qmpTimeout); err != nil {
		return err
	}
	return m.run(ctx, "cont", "guest reset ("+verb+") and running")
}

// waitEvent waits for an event of sub, within ctx and timeout.
func waitEvent(ctx context.Context, q *qmpConn, sub *qmpSub, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-sub.ch:
		return nil
	case <-t.C:
		return machine.Errorf(syscall.ETIMEDOUT, "no %s event from QEMU within %s", sub.name, timeout)
	case <-ctx.Done():
		return ctx.Err()
	case <-q.done:
		return machine.Errorf(syscall.EHOSTDOWN, "QEMU ended")
	}
}

// quit ends QEMU at once (QMP quit), and kills it if QMP does not answer.
// The watcher reports off when the process is gone.
func (m *Machine) quit(ctx context.Context, why string) error {
	m.mu.Lock()
	g := m.g
	var q *qmpConn
	if g != nil {
		g.expect, q = why, g.qmp
	}
	m.mu.Unlock()
	if g == nil {
		m.report.Report(machine.Status{Power: machine.PowerOff, Reachable: true, Reason: "guest is off"})
		return nil
	}
	err := errors.New("no QMP session")
	if q != nil {
		_, err = q.execute(ctx, "quit", nil)
	}
	if err != nil {
		m.log.Warn("qemu: quit not answered, killing QEMU", "pid", g.pid, "err", err)
		m.mu.Lock()
		g.expect = why + ", killed: quit not answered: " + err.Error()
		m.mu.Unlock()
		m.kill(g)
	}
	return nil
}

// poweroff presses the ACPI power button (system_powerdown) and quits QEMU
// if the guest is still up after qemu.poweroff-timeout. A paused guest is
// continued first: a stopped guest sees no button.
func (m *Machine) poweroff(ctx context.Context) error {
	g, err := m.running()
	if err != nil {
		if machine.ErrnoOf(err) == syscall.EHOSTDOWN {
			m.report.Report(machine.Status{Power: machine.PowerOff, Reachable: true, Reason: "guest is off"})
			return nil
		}
		return err
	}
	m.mu.Lock()
	paused := g.paused
	m.mu.Unlock()
	if paused {
		if err := m.run(ctx, "cont", "guest resumed for a poweroff"); err != nil {
			return err
		}
	}
	m.mu.Lock()
	g.expect = "poweroff"
	m.mu.Unlock()
	if _, err := g.qmp.execute(ctx, "system_powerdown", nil); err != nil {
		return m.quit(ctx, "poweroff: system_powerdown not answered ("+err.Error()+"), quit")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if g.timer != nil {
		g.timer.Stop()
	}
	g.timer = time.AfterFunc(m.s.poweroffTimeout, func() {
		m.mu.Lock()
		live := m.g == g && !m.closed
		m.mu.Unlock()
		if live {
			qctx, cancel := context.WithTimeout(context.Background(), m.s.qmpTimeout)
			defer cancel()
			m.quit(qctx, fmt.Sprintf("poweroff: still up %s after the ACPI power button, quit", m.s.poweroffTimeout))
		}
	})
	return nil
}

// powerOn starts QEMU, or continues a guest that is paused or panicked.
func (m *Machine) powerOn(ctx context.Context) error {
	m.mu.Lock()
	g, closed := m.g, m.closed
	m.mu.Unlock()
	switch {
	case closed:
		return machine.Errorf(syscall.ESHUTDOWN, "driver closed")
	case g != nil:
		return m.continueGuest(ctx, g)
	}
	// Checked now, not only at adoption: the other host may have started
	// its guest since.
	if err := m.foreign(); err != nil {
		return err
	}
	if err := m.checkFiles(); err != nil {
		return err
	}
	if err := os.MkdirAll(m.guestDir(), 0o700); err != nil {
		return fmt.Errorf("qemu.dir: %w", err)
	}
	if err := os.WriteFile(m.file(hostFile), []byte(m.path+"\n"), 0o600); err != nil {
		return fmt.Errorf("qemu.dir: %w", err)
	}
	tapName, err := m.plugNet()
	if err != nil {
		return err
	}
	g, err = m.startGuest(ctx, tapName)
	if err != nil {
		m.cleanup(tapName)
		return err
	}
	m.expectEvent(g, fmt.Sprintf("guest started (pid %d, accel %s)", g.pid, g.accel))
	if _, err := g.qmp.execute(ctx, "cont", nil); err != nil {
		return m.quit(ctx, "start failed: cont: "+err.Error())
	}
	return nil
}

// continueGuest is "on" for a guest that runs: a paused one continues, a
// panicked one is reset, a running one is left alone.
func (m *Machine) continueGuest(ctx context.Context, g *guest) error {
	m.mu.Lock()
	paused, crashed, q := g.paused, g.crashed, g.qmp
	m.mu.Unlock()
	switch {
	case q == nil:
		return machine.Errorf(syscall.EHOSTUNREACH, "guest pid %d runs but QMP is not connected: %v", g.pid, g.qmpError)
	case crashed != "":
		return m.reset(ctx, "on after a panic")
	case paused:
		return m.run(ctx, "cont", "guest resumed (on)")
	}
	m.report.Report(machine.Status{Power: machine.PowerOn, Reachable: true, Reason: fmt.Sprintf("guest runs (pid %d)", g.pid)})
	return nil
}

// checkFiles makes sure what QEMU is to open exists, so that "on" fails
// with ENOENT and the file's name rather than with QEMU's exit.
func (m *Machine) checkFiles() error {
	if _, err := exec.LookPath(m.s.binary); err != nil {
		return machine.Errorf(syscall.ENOENT, "qemu.binary %s: %v (Debian package qemu-system-x86)", m.s.binary, err)
	}
	files := [][2]string{{"qemu.kernel", m.s.kernel}, {"qemu.initrd", m.s.initrd}}
	for _, d := range m.s.disks {
		files = append(files, [2]string{"qemu.disk", d.path})
	}
	for _, f := range files {
		if f[1] == "" {
			continue
		}
		if _, err := os.Stat(f[1]); err != nil {
			return machine.Errorf(syscall.ENOENT, "%s: %v", f[0], err)
		}
	}
	return nil
}

// plugNet makes the guest's TAP on its bridge, or checks that its VDE
// switch runs. It returns the TAP's name, "" for none.
func (m *Machine) plugNet() (string, error) {
	n := m.s.net
	switch {
	case n == nil:
		return "", nil
	case n.vde:
		ctl := machine.VDESocket(n.bridge) + "/ctl"
		if _, err := os.Stat(ctl); err != nil {
			return "", machine.Errorf(syscall.ENODEV, "qemu.net: VDE switch %s does not run (%v)", n.bridge, err)
		}
		return "", nil
	}
	if err := tap.Create("qemu.net", m.name, n.bridge, m.tapAlias()); err != nil {
		return "", err
	}
	return m.name, nil
}

func (m *Machine) tapAlias() string { return "machinefs qemu " + m.path }

// startGuest runs QEMU (stopped, -S), connects QMP and the serial port
// and starts watching it. On error nothing runs.
func (m *Machine) startGuest(ctx context.Context, tapName string) (*guest, error) {
	for _, f := range []string{qmpSock, serialSock, pidFile} {
		os.Remove(m.file(f))
	}
	accel := chooseAccel(m.s.accel)
	pid, pidfd, err := m.spawn(m.argv(accel, tapName))
	if err != nil {
		return nil, err
	}
	st, _ := procfs.ReadStat(pid)
	g, err := newGuest(pid, pidfd, st.Start, accel)
	if err != nil {
		m.killSpawned(pid, pidfd)
		return nil, err
	}
	g.tap = tapName
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		m.killSpawned(pid, pidfd)
		return nil, machine.Errorf(syscall.ESHUTDOWN, "driver closed")
	}
	m.g = g
	m.mu.Unlock()
	m.watch(g)
	if err := m.connect(ctx, g, true); err != nil {
		m.mu.Lock()
		g.expect = "start failed"
		m.mu.Unlock()
		m.kill(g)
		<-g.done
		if tail := m.logTail(); tail != "" {
			err = fmt.Errorf("%w; QEMU says: %s", err, tail)
		}
		return nil, machine.Errorf(syscall.EIO, "starting QEMU: %v", err)
	}
	m.log.Info("qemu: guest started", "pid", pid, "accel", accel)
	return g, nil
}

// killSpawned ends a QEMU that is not watched yet.
func (m *Machine) killSpawned(pid, pidfd int) {
	g := &guest{pidfd: pidfd}
	m.kill(g)
	reapWait(pidfd, pid)
}
