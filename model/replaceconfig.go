package model

import (
	"context"
	"fmt"
	"syscall"

	"github.com/machinefs/machinefs/machine"
)

// secretShown is what config reads show for a secret's value. A tool that
// reads config, edits a line and writes the whole file back (an editor's
// temporary file renamed over config) sends it back for every secret.
const secretShown = "<set>"

// ReplaceConfig makes text the host's whole config in one validated step:
// the rename of an editor's or a config-management tool's temporary file
// over config. Unlike SetConfig (a write, which merges), a key that text
// does not set is removed. Every line is checked first: one bad line is
// EINVAL and nothing changes. A secret key written as "<set>" (what config
// reads show) keeps its current value; "key =" with no value is a key not
// set. The checks of a write apply: operators cannot change privileged
// keys, and a secret whose destination an operator changes is cleared
// unless text sets it too.
func (h *Host) ReplaceConfig(ctx context.Context, text string, who Caller) error {
	err := h.replaceWhole(ctx, text, who)
	if err != nil {
		// Safe to publish, as in SetConfig: errors never quote a line.
		h.emit(machine.EventConfig, fmt.Sprintf("refused replace %s: %v", who, err))
	}
	return err
}

func (h *Host) replaceWhole(ctx context.Context, text string, who Caller) error {
	if err := h.tree.writable(); err != nil {
		return err
	}
	if err := checkPrintable("config", text); err != nil {
		return err
	}
	parsed, err := ParseConfig(text)
	if err != nil {
		return err
	}
	cur := h.Config()
	next := &ConfigFile{}
	written := map[string]bool{}
	for _, l := range parsed.lines {
		switch {
		case l.key == "":
			next.lines = append(next.lines, l)
			continue
		case l.value == "":
			continue // "key =": not set, so not in the new file
		}
		if l.value == secretShown && h.tree.IsSecret(l.key) {
			v, ok := cur.Get(l.key)
			if !ok {
				return machine.Errorf(syscall.EINVAL, "%s: %s stands for the stored secret, and none is stored", l.key, secretShown)
			}
			l.value = v
			l.raw = l.key + " = " + v + l.comment
			next.lines = append(next.lines, l)
			continue
		}
		if err := h.tree.checkKey(l.key, l.value); err != nil {
			return err
		}
		written[l.key] = true
		next.lines = append(next.lines, l)
	}

	return h.commitConfig(ctx, who, written, func(cur *ConfigFile) *ConfigFile {
		if cur.Render(nil) == next.Render(nil) {
			return nil
		}
		return next
	}, func(old, next *ConfigFile) []string {
		var set, removed []string
		for _, k := range h.tree.changedKeys(old, next) {
			if _, ok := next.Get(k); ok {
				set = append(set, k)
			} else {
				removed = append(removed, k)
			}
		}
		return keysDetail([]string{"replaced"}, set, removed)
	})
}

// RemoveBusy says why Remove would refuse h right now (EBUSY: h or one of
// its subhosts runs or has a command in flight), or nil. A recursive
// removal (rm -r) asks it before it accepts the unlink of a host's own
// files, so that it removes nothing while the host is busy.
func (t *Tree) RemoveBusy(h *Host) error {
	if why := t.busyTree(h); why != "" {
		return machine.Errorf(syscall.EBUSY, "%s", why)
	}
	return nil
}
