package ns

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/machinefs/machinefs/machine"
)

// extent is where a partition lies in a disk image, in bytes.
type extent struct {
	Offset, Size int64
}

const sector = 512

// findPartition returns where partition n (1-based, as in vda1) of a disk
// image lies. A disk with no partition table has no partitions; its whole
// image counts as partition 1, so an image made by mkfs works as
// DEV:1:IMAGE (the pretend-boot scripts' usual form). MBR primary
// partitions (1-4) and GPT partitions are read; 512-byte sectors assumed,
// as for every image a loop device is given.
func findPartition(image string, n int) (extent, error) {
	f, err := os.Open(image)
	if err != nil {
		return extent{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return extent{}, err
	}
	parts, table, err := readPartitions(f)
	if err != nil {
		return extent{}, fmt.Errorf("%s: partition table: %w", image, err)
	}
	if table == "" {
		if n == 1 {
			return extent{0, fi.Size()}, nil
		}
		return extent{}, machine.Errorf(syscall.ENOENT, "%s has no partition table, so no partition %d (use 1 or 0 for the whole image)", image, n)
	}
	if n < 1 || n > len(parts) || parts[n-1].Size == 0 {
		return extent{}, machine.Errorf(syscall.ENOENT, "%s (%s) has no partition %d", image, table, n)
	}
	p := parts[n-1]
	if p.Offset+p.Size > fi.Size() {
		return extent{}, machine.Errorf(syscall.EINVAL, "%s: partition %d ends past the end of the image", image, n)
	}
	return p, nil
}

// readPartitions reads an MBR or GPT partition table. table is "mbr",
// "gpt" or "" (none); parts[i] is partition i+1, Size 0 for an empty slot.
func readPartitions(r io.ReaderAt) (parts []extent, table string, err error) {
	mbr := make([]byte, sector)
	if _, err := r.ReadAt(mbr, 0); err != nil {
		if err == io.EOF {
			return nil, "", nil // smaller than a sector: no table
		}
		return nil, "", err
	}
	if mbr[510] != 0x55 || mbr[511] != 0xaa {
		return nil, "", nil
	}
	entry := func(i int) (typ byte, start, count uint32) {
		e := mbr[446+16*i:]
		return e[4], binary.LittleEndian.Uint32(e[8:]), binary.LittleEndian.Uint32(e[12:])
	}
	if typ, _, _ := entry(0); typ == 0xee {
		return readGPT(r)
	}
	// A file system's boot sector also ends in 55 aa (FAT does); its
	// "entries" then make no sense: every used one must have a start.
	for i := range 4 {
		typ, start, count := entry(i)
		if typ == 0 || count == 0 {
			parts = append(parts, extent{})
			continue
		}
		if start == 0 {
			return nil, "", nil
		}
		parts = append(parts, extent{int64(start) * sector, int64(count) * sector})
	}
	return parts, "mbr", nil
}

func readGPT(r io.ReaderAt) ([]extent, string, error) {
	hdr := make([]byte, 92)
	if _, err := r.ReadAt(hdr, sector); err != nil {
		return nil, "", err
	}
	if !bytes.Equal(hdr[:8], []byte("EFI PART")) {
		return nil, "", fmt.Errorf("protective MBR but no GPT header")
	}
	lba := int64(binary.LittleEndian.Uint64(hdr[72:]))
	count := binary.LittleEndian.Uint32(hdr[80:])
	size := binary.LittleEndian.Uint32(hdr[84:])
	if size < 128 || count > 1024 {
		return nil, "", fmt.Errorf("GPT header: %d entries of %d bytes", count, size)
	}
	buf := make([]byte, int(count)*int(size))
	if _, err := r.ReadAt(buf, lba*sector); err != nil {
		return nil, "", err
	}
	var parts []extent
	for i := range int(count) {
		e := buf[i*int(size):]
		first, last := binary.LittleEndian.Uint64(e[32:]), binary.LittleEndian.Uint64(e[40:])
		if bytes.Equal(e[:16], make([]byte, 16)) || last < first {
			parts = append(parts, extent{}) // unused entry
			continue
		}
		parts = append(parts, extent{int64(first) * sector, int64(last-first+1) * sector})
	}
	return parts, "gpt", nil
}
