package mountopts

import (
	"strings"
	"testing"
)

func TestParseFstabLine(t *testing.T) {
	// The options field of a typical fstab line, as mount(8) hands it on.
	o, err := Parse("rw,noauto,_netdev,x-systemd.automount,allow_other,default_permissions,config=/etc/machinefs,group=operators,ro,debug")
	if err != nil {
		t.Fatal(err)
	}
	want := Options{AllowOther: true, ReadOnly: true, Debug: true, ConfigDir: "/etc/machinefs", Group: "operators"}
	if o != want {
		t.Fatalf("got %+v, want %+v", o, want)
	}
}

func TestSetAccumulates(t *testing.T) {
	var o Options
	if err := o.Set("allow_other"); err != nil {
		t.Fatal(err)
	}
	if err := o.Set("config=/x,demo"); err != nil {
		t.Fatal(err)
	}
	if !o.AllowOther || !o.Demo || o.ConfigDir != "/x" {
		t.Fatalf("got %+v", o)
	}
	if got := o.String(); got != "allow_other,demo,config=/x" {
		t.Fatalf("String() = %q", got)
	}
}

func TestParseLog(t *testing.T) {
	for in, want := range map[string]string{"log=syslog": "syslog", "log=stderr": "stderr", "log=/var/log//machinefs.log": "/var/log/machinefs.log"} {
		o, err := Parse(in)
		if err != nil || o.Log != want {
			t.Errorf("Parse(%q) = %q, %v; want %q", in, o.Log, err, want)
		}
	}
}

func TestParseMaxReaders(t *testing.T) {
	o, err := Parse("allow_other,max-readers=8")
	if err != nil || o.MaxReaders != 8 {
		t.Fatalf("Parse max-readers=8: %+v, %v", o, err)
	}
	if got := o.String(); got != "allow_other,max-readers=8" {
		t.Fatalf("String() = %q", got)
	}
	if o, err := Parse("allow_other"); err != nil || o.MaxReaders != 0 {
		t.Fatalf("without max-readers: %+v, %v; want 0 (the default)", o, err)
	}
}

func TestParseRejects(t *testing.T) {
	for _, s := range []string{"bogus", "config=", "allow_other=1", "group", "ro=yes", "log=", "log=relative/file", "log=journal",
		"max-readers", "max-readers=", "max-readers=0", "max-readers=-1", "max-readers=x", "max-readers=65537"} {
		if _, err := Parse(s); err == nil || !strings.Contains(err.Error(), "mount option") {
			t.Errorf("Parse(%q) err = %v, want a mount option error", s, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add("allow_other,config=/etc/machinefs,group=ops")
	f.Fuzz(func(t *testing.T, s string) {
		o, err := Parse(s)
		if err != nil {
			return
		}
		// Whatever parses renders to a string that parses to the same.
		o2, err := Parse(o.String())
		if err != nil || o2 != o {
			t.Fatalf("round trip %q -> %q: %+v != %+v (%v)", s, o.String(), o2, o, err)
		}
	})
}
