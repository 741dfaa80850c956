package member

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/authpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultPrefix is where machinefs keeps its keys in etcd.
const DefaultPrefix = "/machinefs/"

// AgentRole is the role every agent has: read all of the prefix, write the
// keys agents share (config, groups, requests, owners).
const AgentRole = "machinefs-agent"

// SharedDirs are the directories under the prefix that every agent may
// write; the rest is per node (see NodeRole).
var SharedDirs = []string{"config/", "groups/", "requests/", "owners/"}

// NodeRole names the role that lets node write its own keys.
func NodeRole(node string) string { return "machinefs-node-" + node }

// EnableAuth turns on etcd auth so that an agent can write only the keys it
// owns. Each agent is an etcd user named as its node, without a password:
// it authenticates by the CN of its client certificate, so the members must
// run with client-cert-auth (a CA given). Every agent may read all of
// prefix (DefaultPrefix when empty) and write the shared directories
// (SharedDirs) and its own keys: prefix+"agents/"+node (its liveness key)
// and what lies under prefix+"agents/"+node+"/" and prefix+"nodes/"+node+"/"
// (its status, events and results). etcd enables auth only with a root
// user, added here without a password: afterwards, administration takes a
// client certificate with CN root.
//
// EnableAuth may run again with more agents: what exists is kept. cli must
// be allowed to administer (before auth: anyone; after: root).
func EnableAuth(ctx context.Context, cli *clientv3.Client, prefix string, agents []string) error {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		return fmt.Errorf("etcd auth: prefix %q must end in /", prefix)
	}
	if err := addUser(ctx, cli, "root", "root"); err != nil {
		return err
	}
	if err := addRole(ctx, cli, AgentRole, perm{key: prefix, perm: read}); err != nil {
		return err
	}
	for _, d := range SharedDirs {
		if err := grant(ctx, cli, AgentRole, perm{key: prefix + d, perm: readWrite}); err != nil {
			return err
		}
	}
	for _, a := range agents {
		if a == "" || a == "root" || strings.ContainsAny(a, "/") {
			return fmt.Errorf("etcd auth: %q cannot name an agent", a)
		}
		own := []perm{
			{key: prefix + "agents/" + a, perm: readWrite, exact: true},
			{key: prefix + "agents/" + a + "/", perm: readWrite},
			{key: prefix + "nodes/" + a + "/", perm: readWrite},
		}
		if err := addRole(ctx, cli, NodeRole(a), own...); err != nil {
			return err
		}
		if err := addUser(ctx, cli, a, AgentRole, NodeRole(a)); err != nil {
			return err
		}
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		return fmt.Errorf("etcd auth: enable: %w", err)
	}
	return nil
}

// read and readWrite are etcd's permission types as the client API takes
// them.
var (
	read      = clientv3.PermissionType(clientv3.PermRead)
	readWrite = clientv3.PermissionType(clientv3.PermReadWrite)
)

// perm is one permission of a role: a key prefix, or one key if exact.
type perm struct {
	key   string
	perm  clientv3.PermissionType
	exact bool
}

func addUser(ctx context.Context, cli *clientv3.Client, name string, roles ...string) error {
	_, err := cli.UserAddWithOptions(ctx, name, "", &clientv3.UserAddOptions{NoPassword: true})
	if err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
		return fmt.Errorf("etcd auth: add user %s: %w", name, err)
	}
	for _, r := range roles {
		if _, err := cli.UserGrantRole(ctx, name, r); err != nil {
			return fmt.Errorf("etcd auth: grant role %s to %s: %w", r, name, err)
		}
	}
	return nil
}

func addRole(ctx context.Context, cli *clientv3.Client, name string, perms ...perm) error {
	if _, err := cli.RoleAdd(ctx, name); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return fmt.Errorf("etcd auth: add role %s: %w", name, err)
	}
	for _, p := range perms {
		if err := grant(ctx, cli, name, p); err != nil {
			return err
		}
	}
	return nil
}

func grant(ctx context.Context, cli *clientv3.Client, role string, p perm) error {
	end := clientv3.GetPrefixRangeEnd(p.key)
	if p.exact {
		end = ""
	}
	if _, err := cli.RoleGrantPermission(ctx, role, p.key, end, p.perm); err != nil {
		return fmt.Errorf("etcd auth: grant %s on %s to role %s: %w", authpb.Permission_Type(p.perm), p.key, role, err)
	}
	return nil
}
