// Package cluster makes one machinefs tree span many machines: every
// machine runs an agent (a machinefs daemon with -o node=NAME), and the
// agents share one etcd keyspace. The agent that owns a host runs it
// (builds its drivers, runs its commands) and publishes its state and
// events; every other agent shows them and forwards commands to it.
//
// The keyspace, under a prefix (default "/machinefs/"):
//
//	config/PATH/           host configs (package store/etcdstore)
//	groups/NAME            group members (store/etcdstore)
//	agents/NODE            one per live agent, on its session lease
//	owners/PATH            the agent that won a host (elected hosts only)
//	requests/NODE/ID       a command for NODE's hosts, on the writer's lease
//	nodes/NODE/status/PATH NODE's last snapshot of a host it runs
//	nodes/NODE/events      NODE's latest batch of events (every put is read)
//	nodes/NODE/results/ID  NODE's answer to request ID
//
// An agent writes only agents/NODE, nodes/NODE/, the owners/ keys it wins,
// requests/ and the config: etcd auth can hold it to that (cluster/member).
package cluster

import "strings"

type keys struct{ prefix string }

func (k keys) agents() string              { return k.prefix + "agents/" }
func (k keys) agent(node string) string    { return k.prefix + "agents/" + node }
func (k keys) owners() string              { return k.prefix + "owners/" }
func (k keys) owner(path string) string    { return k.prefix + "owners/" + path }
func (k keys) requests(node string) string { return k.prefix + "requests/" + node + "/" }
func (k keys) request(node, id string) string {
	return k.prefix + "requests/" + node + "/" + id
}
func (k keys) nodes() string                   { return k.prefix + "nodes/" }
func (k keys) status(node, path string) string { return k.prefix + "nodes/" + node + "/status/" + path }
func (k keys) joined(node string) string       { return k.prefix + "nodes/" + node + "/joined" }
func (k keys) events(node string) string       { return k.prefix + "nodes/" + node + "/events" }
func (k keys) result(node, id string) string   { return k.prefix + "nodes/" + node + "/results/" + id }

// nodeKey splits a key under nodes/ into the node and the rest
// ("status/hosts/a", "events", "results/ID").
func (k keys) nodeKey(key string) (node, rest string, ok bool) {
	s, ok := strings.CutPrefix(key, k.nodes())
	if !ok {
		return "", "", false
	}
	node, rest, ok = strings.Cut(s, "/")
	return node, rest, ok
}
