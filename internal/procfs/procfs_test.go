package procfs

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseStat(t *testing.T) {
	// A command name with spaces and parentheses, as a program can name
	// itself (prctl PR_SET_NAME).
	line := "4242 (a b) (c)) S 1 4240 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100 18446744073709551615\n"
	s, err := ParseStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if s != (Stat{Comm: "a b) (c)", State: 'S', Ppid: 1, Pgrp: 4240, Start: 987654}) || !s.Live() {
		t.Fatalf("ParseStat = %+v", s)
	}
	z, err := ParseStat([]byte(strings.Replace(line, ") S ", ") Z ", 1)))
	if err != nil || z.Live() {
		t.Fatalf("a zombie: %+v %v", z, err)
	}
	for _, bad := range []string{"", "4242 comm S 1", "4242 (x) S 1 2 3", strings.Replace(line, "987654", "x", 1), strings.Replace(line, "S 1 4240", "S 1 y", 1)} {
		if s, err := ParseStat([]byte(bad)); err == nil {
			t.Errorf("ParseStat(%q) = %+v, want an error", bad, s)
		}
	}
}

// The parser reads a real process: this one, and a child, whose start
// time comes after ours and which shows as a zombie until reaped.
func TestReadStat(t *testing.T) {
	self, err := ReadStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if !self.Live() || self.Pgrp != syscall.Getpgrp() || self.Start == 0 {
		t.Fatalf("this process: %+v, pgrp %d", self, syscall.Getpgrp())
	}
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	defer cmd.Process.Release()
	// Wait for it to end without reaping it (WNOWAIT).
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		t.Fatal(err)
	}
	child, err := ReadStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	if child.Live() || child.Start < self.Start {
		t.Fatalf("ended child: %+v (this process started at %d)", child, self.Start)
	}
	if _, err := syscall.Wait4(pid, nil, 0, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadStat(pid); !os.IsNotExist(err) {
		t.Fatalf("a reaped process: %v, want not exist", err)
	}
}

func TestParseStatus(t *testing.T) {
	text := "Name:\tcat\nUmask:\t0022\nState:\tR (running)\nTgid:\t1234\nNgid:\t0\nPid:\t1240\nPPid:\t1\nUid:\t0\t0\t0\t0\nGroups:\t4 24 27 x 1000 \nNSpid:\t1240\n"
	if st := ParseStatus([]byte(text)); st.Tgid != 1234 || !slices.Equal(st.Groups, []uint32{4, 24, 27, 1000}) {
		t.Fatalf("ParseStatus = %+v", st)
	}
	if st := ParseStatus([]byte("Tgid:\t7\nGroups:\t\n")); st.Tgid != 7 || st.Groups != nil {
		t.Fatalf("no groups: %+v", st)
	}
}

func TestReadStatus(t *testing.T) {
	st, err := ReadStatus(syscall.Gettid())
	if err != nil {
		t.Fatal(err)
	}
	groups, _ := os.Getgroups()
	var want []uint32
	for _, g := range groups {
		want = append(want, uint32(g))
	}
	slices.Sort(want)
	got := slices.Sorted(slices.Values(st.Groups))
	if st.Tgid != os.Getpid() || !slices.Equal(got, want) {
		t.Fatalf("ReadStatus(this thread) = %+v, want tgid %d groups %v", st, os.Getpid(), want)
	}
}

func TestParseStatusMemory(t *testing.T) {
	st := ParseStatus([]byte("Name:\tx\nTgid:\t7\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nVmFlags: bad\nGroups:\t4 27\n"))
	if st.Tgid != 7 || st.VmKiB["VmRSS"] != 1024 || st.VmKiB["VmHWM"] != 2048 || len(st.VmKiB) != 2 || len(st.Groups) != 2 {
		t.Fatalf("ParseStatus = %+v", st)
	}
	self, err := ReadStatus(os.Getpid())
	if err != nil || self.VmKiB["VmRSS"] == 0 {
		t.Fatalf("this process: %+v %v", self, err)
	}
}
