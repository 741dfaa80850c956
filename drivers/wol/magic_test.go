package wol

import (
	"bytes"
	"errors"
	"net"
	"testing"
)

var testMAC = net.HardwareAddr{0x02, 0x00, 0x5e, 0x10, 0x20, 0x30}

func wantMagic(mac net.HardwareAddr, pw []byte) []byte {
	b := bytes.Repeat([]byte{0xff}, 6)
	for range 16 {
		b = append(b, mac...)
	}
	return append(b, pw...)
}

func TestMagicPacketMarshal(t *testing.T) {
	for _, pw := range [][]byte{nil, {1, 2, 3, 4}, {1, 2, 3, 4, 5, 6}} {
		b, err := MagicPacket{Target: testMAC, Password: pw}.MarshalBinary()
		if err != nil {
			t.Fatalf("password %x: %v", pw, err)
		}
		if len(b) != 102+len(pw) {
			t.Errorf("password %x: length %d", pw, len(b))
		}
		if !bytes.Equal(b, wantMagic(testMAC, pw)) {
			t.Errorf("password %x: bytes\n%x\nwant\n%x", pw, b, wantMagic(testMAC, pw))
		}
		// Spot-check the layout independently of wantMagic.
		if !bytes.Equal(b[:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) || !bytes.Equal(b[6:12], testMAC) || !bytes.Equal(b[96:102], testMAC) {
			t.Errorf("layout wrong: %x", b)
		}
		var p MagicPacket
		if err := p.UnmarshalBinary(b); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p.Target, testMAC) || !bytes.Equal(p.Password, pw) {
			t.Errorf("round trip: %v %x", p.Target, p.Password)
		}
	}
}

func TestMagicPacketMarshalErrors(t *testing.T) {
	for _, tc := range []struct {
		p    MagicPacket
		want error
	}{
		{MagicPacket{}, ErrInvalidMAC},
		{MagicPacket{Target: make(net.HardwareAddr, 8)}, ErrInvalidMAC},
		{MagicPacket{Target: testMAC, Password: []byte{1}}, ErrInvalidPassword},
		{MagicPacket{Target: testMAC, Password: []byte{1, 2, 3, 4, 5}}, ErrInvalidPassword},
		{MagicPacket{Target: testMAC, Password: make([]byte, 8)}, ErrInvalidPassword},
	} {
		if _, err := tc.p.MarshalBinary(); !errors.Is(err, tc.want) {
			t.Errorf("%+v: err %v, want %v", tc.p, err, tc.want)
		}
	}
}

func TestMagicPacketUnmarshalErrors(t *testing.T) {
	good := wantMagic(testMAC, nil)
	badSync := bytes.Clone(good)
	badSync[3] = 0xfe
	badRepeat := bytes.Clone(good)
	badRepeat[6+15*6+2] ^= 1
	for name, tc := range map[string]struct {
		b    []byte
		want error
	}{
		"empty":     {nil, ErrInvalidLength},
		"short":     {good[:101], ErrInvalidLength},
		"pw5":       {append(bytes.Clone(good), 1, 2, 3, 4, 5), ErrInvalidLength},
		"pw7":       {append(bytes.Clone(good), 1, 2, 3, 4, 5, 6, 7), ErrInvalidLength},
		"sync":      {badSync, ErrInvalidSync},
		"repeat":    {badRepeat, ErrInvalidTarget},
		"pw4 ok":    {append(bytes.Clone(good), 9, 9, 9, 9), nil},
		"no sync 2": {append([]byte{0}, good[1:]...), ErrInvalidSync},
	} {
		var p MagicPacket
		if err := p.UnmarshalBinary(tc.b); !errors.Is(err, tc.want) {
			t.Errorf("%s: err %v, want %v", name, err, tc.want)
		}
	}
}

func TestUnmarshalCopies(t *testing.T) {
	b := wantMagic(testMAC, []byte{1, 2, 3, 4})
	var p MagicPacket
	if err := p.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	clear(b)
	if !bytes.Equal(p.Target, testMAC) || !bytes.Equal(p.Password, []byte{1, 2, 3, 4}) {
		t.Fatal("UnmarshalBinary kept a reference to its input")
	}
}

func TestParsePassword(t *testing.T) {
	for in, want := range map[string][]byte{
		"01:02:03:04:05:06": {1, 2, 3, 4, 5, 6},
		"aa-bb-cc-dd":       {0xaa, 0xbb, 0xcc, 0xdd},
		"AA:bb:0c:dd":       {0xaa, 0xbb, 0x0c, 0xdd},
		"192.168.1.1":       {192, 168, 1, 1},
		"0.0.0.0":           {0, 0, 0, 0},
	} {
		got, err := ParsePassword(in)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("ParsePassword(%q) = %x, %v; want %x", in, got, err, want)
		}
	}
	for _, in := range []string{"", "01:02:03", "01:02:03:04:05", "01:02:03:04:05:06:07", "1:2:3:4", "01::02:03:04",
		"gg:00:00:00", "192.168.1", "192.168.1.256", "1.2.3.4.5", "010203040506"} {
		if got, err := ParsePassword(in); err == nil {
			t.Errorf("ParsePassword(%q) = %x, want error", in, got)
		} else if in != "" && bytes.Contains([]byte(err.Error()), []byte(`"`+in+`"`)) {
			t.Errorf("ParsePassword(%q): error %q echoes the secret", in, err)
		}
	}
}

func TestFrame(t *testing.T) {
	src := net.HardwareAddr{0x02, 1, 2, 3, 4, 5}
	f, err := Frame(src, MagicPacket{Target: testMAC})
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 1, 2, 3, 4, 5, 0x08, 0x42}, wantMagic(testMAC, nil)...)
	if !bytes.Equal(f, want) {
		t.Fatalf("frame %x\nwant  %x", f, want)
	}
}

func FuzzUnmarshal(f *testing.F) {
	f.Add(wantMagic(testMAC, nil))
	f.Add(wantMagic(testMAC, []byte{1, 2, 3, 4}))
	f.Add(wantMagic(testMAC, []byte{1, 2, 3, 4, 5, 6}))
	f.Add(wantMagic(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, nil))
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0xff}, 108))
	f.Fuzz(func(t *testing.T, b []byte) {
		var p MagicPacket
		if err := p.UnmarshalBinary(b); err != nil {
			return
		}
		out, err := p.MarshalBinary()
		if err != nil {
			t.Fatalf("unmarshal accepted %x but marshal failed: %v", b, err)
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("round trip changed bytes:\n in %x\nout %x", b, out)
		}
	})
}
