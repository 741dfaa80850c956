package mountopts

import (
	"os"
	"reflect"
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
	if !reflect.DeepEqual(o, want) {
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

func TestParseCluster(t *testing.T) {
	o, err := Parse("node=lab07,cluster=https://etcd1:2379+https://etcd2:2379/,cluster=https://10.0.0.3:2379," +
		"etcd-ca=/etc/machinefs/ca.pem,etcd-cert=/etc/machinefs/lab07.pem,etcd-key=/etc/machinefs/lab07.key,secret-key=/etc/machinefs/site.key")
	if err != nil {
		t.Fatal(err)
	}
	want := Options{Node: "lab07", Cluster: []string{"https://etcd1:2379", "https://etcd2:2379", "https://10.0.0.3:2379"},
		EtcdCA: "/etc/machinefs/ca.pem", EtcdCert: "/etc/machinefs/lab07.pem", EtcdKey: "/etc/machinefs/lab07.key",
		SecretKey: "/etc/machinefs/site.key"}
	if !reflect.DeepEqual(o, want) {
		t.Fatalf("got %+v\nwant %+v", o, want)
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(o, want) {
		t.Fatalf("Validate changed options without a member: %+v", o)
	}
	if got := o.String(); !strings.Contains(got, "cluster=https://etcd1:2379,cluster=https://etcd2:2379,cluster=https://10.0.0.3:2379") {
		t.Fatalf("String() = %q", got)
	}
}

func TestValidateMemberDefaults(t *testing.T) {
	o, err := Parse("node=lab1,member=/var/lib/machinefs/etcd,peer-url=http://10.71.0.1:2380,client-url=http://10.71.0.1:2379")
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(o.Cluster, []string{"http://10.71.0.1:2379"}) || o.InitialCluster != "lab1=http://10.71.0.1:2380" || o.InitialState != "new" {
		t.Fatalf("defaults: cluster %q, initial-cluster %q, initial-state %q", o.Cluster, o.InitialCluster, o.InitialState)
	}

	o, err = Parse("node=lab2,member=/d,peer-url=http://10.71.0.2:2380,client-url=http://10.71.0.2:2379,initial-state=existing," +
		"initial-cluster=lab1=http://10.71.0.1:2380+lab2=http://10.71.0.2:2380+lab3=http://10.71.0.3:2380,cluster=http://10.71.0.1:2379")
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(o.Cluster, []string{"http://10.71.0.1:2379"}) || o.InitialState != "existing" {
		t.Fatalf("given values replaced: cluster %q, initial-state %q", o.Cluster, o.InitialState)
	}
}

func TestValidateRejects(t *testing.T) {
	const member = "member=/d,peer-url=http://10.0.0.1:2380,client-url=http://10.0.0.1:2379"
	for s, want := range map[string]string{
		"node=lab1":             "node= needs cluster=URL",
		"cluster=http://e:2379": "need node=NAME",
		member:                  "need node=NAME",
		"etcd-ca=/ca.pem":       "need cluster= or member=",
		"secret-key=/k":         "need cluster= or member=",
		"node=a,cluster=https://e:2379,etcd-cert=/c":            "come together",
		"node=a,cluster=https://e:2379,etcd-key=/k":             "come together",
		"node=a,cluster=http://e:2379,etcd-cert=/c,etcd-key=/k": "plain http",
		"node=a,cluster=http://e:2379,peer-url=http://e:2380":   "need member=DIR",
		"node=a,cluster=http://e:2379,initial-state=existing":   "need member=DIR",
		"node=a,member=/d": "needs peer-url=URL",
		"node=a,member=/d,peer-url=http://10.0.0.1:2380":                                   "client-url=URL",
		"node=a," + member + ",initial-cluster=b=http://10.0.0.2:2380":                     "does not name this member",
		"node=a," + member + ",initial-cluster=a=http://10.0.0.9:2380":                     "peer URL http://10.0.0.9:2380",
		"node=a,member=/d,peer-url=https://10.0.0.1:2380,client-url=https://10.0.0.1:2379": "needs etcd-cert=",
		"node=a," + member + ",etcd-cert=/c,etcd-key=/k,cluster=https://e:2379":            "plain http",
	} {
		o, err := Parse(s)
		if err != nil {
			t.Errorf("Parse(%q): %v", s, err)
			continue
		}
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate(%q) = %v, want an error with %q", s, err, want)
		}
	}
	// Without cluster options, nothing changes.
	if o, err := Parse("allow_other,config=/x"); err != nil || o.Validate() != nil {
		t.Fatalf("plain options: %v, %v", err, o.Validate())
	}
}

func TestParseRejectsCluster(t *testing.T) {
	for _, s := range []string{"node=", "node=-x", "node=a/b", "node=" + strings.Repeat("a", 64),
		"cluster=", "cluster=etcd1:2379", "cluster=ftp://e:1", "cluster=unix:///run/etcd.sock", "cluster=http://e",
		"cluster=http://e:0", "cluster=http://e:99999", "cluster=http://:2379", "cluster=http://u@e:2379", "cluster=http://e:2379/v3",
		"cluster=http://e:2379+", "peer-url=", "client-url=e:2379", "initial-cluster=", "initial-cluster=a",
		"initial-cluster=a=http://e:2380+a=http://f:2380", "initial-cluster=-a=http://e:2380", "initial-state=", "initial-state=old",
		"member=", "etcd-ca=", "etcd-cert=", "etcd-key=", "secret-key=", "node"} {
		if _, err := Parse(s); err == nil || !strings.Contains(err.Error(), "mount option") {
			t.Errorf("Parse(%q) err = %v, want a mount option error", s, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add("allow_other,config=/etc/machinefs,group=ops")
	f.Add("node=a,cluster=http://e:1+https://f:2,member=/d,peer-url=http://x:1,initial-cluster=a=http://x:1+b=https://y:2,initial-state=new")
	f.Fuzz(func(t *testing.T, s string) {
		o, err := Parse(s)
		if err != nil {
			return
		}
		// Whatever parses renders to a string that parses to the same.
		o2, err := Parse(o.String())
		if err != nil || !reflect.DeepEqual(o2, o) {
			t.Fatalf("round trip %q -> %q: %+v != %+v (%v)", s, o.String(), o2, o, err)
		}
	})
}

func TestStatusDir(t *testing.T) {
	dir := t.TempDir()
	o, err := Parse("status-dir=" + dir + "/")
	if err != nil || o.StatusDir != dir {
		t.Fatalf("Parse status-dir=%s/: %+v, %v", dir, o, err)
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := o.String(); got != "status-dir="+dir {
		t.Fatalf("String() = %q", got)
	}
	for _, s := range []string{"status-dir", "status-dir=", "status-dir=relative/dir"} {
		if _, err := Parse(s); err == nil || !strings.Contains(err.Error(), "mount option") {
			t.Errorf("Parse(%q) err = %v, want a mount option error", s, err)
		}
	}
	file := dir + "/file"
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{file: "not a directory", dir + "/missing": "no such file or directory"} {
		o := Options{StatusDir: path}
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "status-dir="+path) {
			t.Errorf("Validate status-dir=%s: %v, want %q", path, err, want)
		}
	}
}
