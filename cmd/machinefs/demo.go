package main

import (
	"context"
	"fmt"

	"github.com/machinefs/machinefs/model"
)

// loadDemo fills the tree with simulated machines. With n > 0 it makes n
// plain hosts (benchmarks); otherwise a small lab: a few hosts, one with
// subhosts, one that fails on demand.
func loadDemo(ctx context.Context, tree *model.Tree, n int) error {
	who := model.Caller{}
	add := func(parent *model.Host, name string, kv ...string) (*model.Host, error) {
		if h := tree.Child(parent, name); h != nil {
			return h, nil // kept from an earlier demo in the same config dir
		}
		cf := &model.ConfigFile{}
		cf.Set("drivers", "sim")
		for i := 0; i+1 < len(kv); i += 2 {
			cf.Set(kv[i], kv[i+1])
		}
		h, err := tree.Add(ctx, parent, name, cf, who)
		if err != nil {
			return nil, fmt.Errorf("demo host %s: %w", name, err)
		}
		return h, nil
	}
	if n > 0 {
		for i := 1; i <= n; i++ {
			if _, err := add(nil, fmt.Sprintf("node%05d", i), "sim.on-delay", "100ms", "sim.off-delay", "100ms"); err != nil {
				return err
			}
		}
		return nil
	}
	lab01, err := add(nil, "lab01", "label", "demo host with two subhosts", "sim.on-delay", "2s", "sim.off-delay", "1s")
	if err != nil {
		return err
	}
	for _, name := range []string{"vm1", "vm2"} {
		if _, err := add(lab01, name, "label", "simulated subhost", "sim.on-delay", "500ms", "sim.off-delay", "500ms"); err != nil {
			return err
		}
	}
	if _, err := add(nil, "lab02", "label", "demo host, starts on", "sim.initial", "on"); err != nil {
		return err
	}
	if _, err := add(nil, "lab03", "label", "demo host whose power on always fails", "sim.fail", "on wol"); err != nil {
		return err
	}
	_, err = add(nil, "lab04", "label", "demo host that never answers power off", "sim.hang", "off poweroff", "timeout", "3s")
	return err
}
