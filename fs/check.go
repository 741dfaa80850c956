package fs

import (
	"context"

	"github.com/machinefs/machinefs/model"
	"github.com/machinefs/machinefs/view"
)

// The tool and permission reports (model/check.go) are live files: a
// host's check is asked of the model at each read pass, which makes a
// new report when the last is a few seconds old (bounded by the host's
// timeout); the root's check lists the reports already made, so reading
// it runs no check. Both are read-only: writes, truncation and unlink
// are refused as on every file that takes no writes.

// hostCheckFile is hosts/NAME/check.
func (f *FS) hostCheckFile(h *model.Host) *liveFile {
	a := fileAttrs{fsys: f, ino: hostIno(h, idxCheck), perm: fixed(f.statusMode()), changed: f.startTime}
	return &liveFile{fileAttrs: a, ask: func(ctx context.Context) ([]byte, error) {
		return []byte(view.Check(h.Check(ctx))), nil
	}}
}

// treeCheckFile is the check file at the mount's root.
func (f *FS) treeCheckFile() *liveFile {
	return &liveFile{fileAttrs: f.attrs(f.statusMode()), ask: func(context.Context) ([]byte, error) {
		return []byte(view.TreeCheck(f.tree.CheckSummaries())), nil
	}}
}
