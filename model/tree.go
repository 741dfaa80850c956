package model

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/cmdtab"
	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/store"
)

// Options configure a Tree.
type Options struct {
	// Store persists host configs and groups; nil keeps them in memory
	// only.
	Store store.Store
	// Drivers are the drivers hosts may use, by name.
	Drivers []machine.DriverSpec
	// ReadOnly refuses every command and config change with EROFS.
	ReadOnly bool
	// Log receives the daemon's log; nil discards.
	Log *slog.Logger
	// HostLogLimit and TreeLogLimit bound events.log sizes in bytes.
	HostLogLimit, TreeLogLimit int
	// Switches manages the local host's virtual switches; nil: none.
	Switches machine.Switches
	// FanOut bounds how many members' commands of a group are on their
	// way to their drivers at once; 0: the whole group, up to
	// MaxAutoFanOut (Group.FanOut).
	FanOut int
	// AdminGid is the admin group (-o admingroup=), whose members may set
	// privileged keys as root may; it counts only with HasAdminGroup.
	AdminGid      uint32
	HasAdminGroup bool
	// Peers is the rest of the cluster (package cluster); nil on a single
	// machine. It may be set after NewTree with SetPeers, before Load.
	Peers Peers
}

// Tree is the machine model: every host and subhost, the drivers they may
// use, the config store and the event bus. It knows nothing of FUSE.
type Tree struct {
	specs    map[string]machine.DriverSpec
	store    store.Store
	readOnly bool
	log      *slog.Logger
	bus      *bus
	treeLog  *EventLog
	hostLog  int
	fanout   int
	switches machine.Switches
	adminGid uint32 // adminGroupUnset without -o admingroup=
	nextID   atomic.Uint64
	peers    Peers
	stale    atomic.Pointer[string] // why the cluster's state may be old
	echoMu   sync.Mutex
	echoes   map[string][]string // see expectEcho

	mu     sync.RWMutex
	hosts  map[string]*Host // top-level hosts by name
	groups map[string]*Group
	closed bool
}

// NewTree builds an empty tree.
func NewTree(o Options) *Tree {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.HostLogLimit == 0 {
		o.HostLogLimit = 256 << 10
	}
	if o.TreeLogLimit == 0 {
		o.TreeLogLimit = 4 << 20
	}
	if o.FanOut < 0 {
		o.FanOut = 0
	}
	t := &Tree{
		specs:    map[string]machine.DriverSpec{},
		store:    o.Store,
		readOnly: o.ReadOnly,
		log:      o.Log,
		bus:      newBus(),
		treeLog:  newEventLog(o.TreeLogLimit),
		hostLog:  o.HostLogLimit,
		hosts:    map[string]*Host{},
		groups:   map[string]*Group{},
		fanout:   o.FanOut,
		switches: o.Switches,
		adminGid: adminGroupUnset,
		peers:    o.Peers,
	}
	if o.HasAdminGroup {
		t.adminGid = o.AdminGid
	}
	for _, s := range o.Drivers {
		t.specs[s.Name] = s
	}
	return t
}

// SetPeers makes the tree one agent of a cluster; call it before Load.
func (t *Tree) SetPeers(p Peers) { t.peers = p }

// SetReadOnly makes the tree refuse changes from now on (after the
// daemon loaded its config and demo hosts).
func (t *Tree) SetReadOnly(ro bool) { t.readOnly = ro }

// ReadOnly reports whether the tree refuses changes.
func (t *Tree) ReadOnly() bool { return t.readOnly }

// Log is the whole tree's events.log.
func (t *Tree) Log() *EventLog { return t.treeLog }

// Subscribe streams the events under prefix ("" for all) from now on.
func (t *Tree) Subscribe(prefix string) *Subscription { return t.bus.subscribe(prefix) }

// Watch calls fn for every event, synchronously: fn must not block or call
// back into the tree. It is how the filesystem learns what to refresh.
// The returned func stops watching.
func (t *Tree) Watch(fn func(Event)) func() { return t.bus.watch(fn) }

// WatchAfter calls fn after every event, once the watchers had it, in
// the goroutine that made the change and with none of the tree's locks
// held: fn may read the tree's own state (a host's power) but must not
// change it, nor call into drivers (Describe, Status: what view.State
// renders): that goroutine may be a driver's, reporting from inside its
// own lock. It is for work that should happen as soon as the change is made,
// without waking another goroutine (a cross-CPU wake-up costs a tenth of
// a millisecond on a small VM); it delays the goroutine that made the
// change by as long as fn takes. The returned func stops watching.
func (t *Tree) WatchAfter(fn func(Event)) func() { return t.bus.watchAfter(fn) }

func (t *Tree) publish(e Event) {
	if t.peers != nil && e.Node == "" {
		e.Node = t.peers.Node()
	}
	line := e.Line()
	t.mu.RLock()
	for h := t.nearestLocked(e.Path); h != nil; h = h.parent {
		h.log.append(line)
	}
	if name, ok := strings.CutPrefix(e.Path, "groups/"); ok {
		if g := t.groups[name]; g != nil {
			g.log.append(line)
		}
	}
	t.mu.RUnlock()
	t.treeLog.append(line)
	t.bus.publish(e)
	t.log.Info("event", "path", e.Path, "kind", e.Kind, "detail", e.Detail)
}

// Host returns the host at path ("hosts/lab01/subhosts/vm1"), or nil.
func (t *Tree) Host(path string) *Host {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.lookupLocked(path)
}

func (t *Tree) lookupLocked(path string) *Host {
	parts := strings.Split(path, "/")
	if len(parts) < 2 || parts[0] != "hosts" {
		return nil
	}
	h := t.hosts[parts[1]]
	for i := 2; h != nil && i < len(parts); i += 2 {
		if parts[i] != "subhosts" || i+1 >= len(parts) {
			return nil
		}
		h = h.subhosts[parts[i+1]]
	}
	return h
}

// nearestLocked is the host at path or, for a host just removed, its
// nearest ancestor still in the tree.
func (t *Tree) nearestLocked(path string) *Host {
	for path != "" {
		if h := t.lookupLocked(path); h != nil {
			return h
		}
		i := strings.LastIndex(path, "/subhosts/")
		if i < 0 {
			return nil
		}
		path = path[:i]
	}
	return nil
}

// Hosts lists the hosts under parent (nil for hosts/), sorted by name.
func (t *Tree) Hosts(parent *Host) []*Host {
	t.mu.RLock()
	defer t.mu.RUnlock()
	m := t.hosts
	if parent != nil {
		m = parent.subhosts
	}
	out := make([]*Host, 0, len(m))
	for _, h := range m {
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// Child returns the host named name under parent (nil for hosts/).
func (t *Tree) Child(parent *Host, name string) *Host {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if parent == nil {
		return t.hosts[name]
	}
	return parent.subhosts[name]
}

func (t *Tree) subhostNames(h *Host) []string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return slices.Sorted(maps.Keys(h.subhosts))
}

// Add creates a host named name under parent (nil for hosts/) with the
// given config, saves it and starts its drivers. Keys are checked first:
// a bad key or value is EINVAL and nothing is created.
func (t *Tree) Add(ctx context.Context, parent *Host, name string, cf *ConfigFile, who Caller) (*Host, error) {
	if err := t.writable(); err != nil {
		return nil, err
	}
	if !ValidName(name) {
		return nil, machine.Errorf(syscall.EINVAL, "%q is not a valid name (letters, digits, '.', '_', '-'; at most 63)", name)
	}
	if cf == nil {
		cf = &ConfigFile{}
	}
	for _, k := range cf.Keys() {
		v, _ := cf.Get(k)
		if err := checkPrintable(k, v); err != nil {
			return nil, err
		}
		if err := t.checkKey(k, v); err != nil {
			return nil, err
		}
	}
	if err := t.checkPrivileged(who, nil, cf); err != nil {
		return nil, err
	}
	if err := t.checkPlacement(nil, parent, cf); err != nil {
		return nil, err
	}
	h, err := t.insert(parent, name, cf)
	if err != nil {
		return nil, err
	}
	if err := t.saveConfig(h.path, cf); err != nil {
		t.detach(h)
		return nil, machine.Errorf(syscall.EIO, "%v", err)
	}
	h.emit(machine.EventAdded, who.String())
	h.rebuildDrivers(ctx)
	return h, nil
}

func (t *Tree) insert(parent *Host, name string, cf *ConfigFile) (*Host, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, machine.Errorf(syscall.ESHUTDOWN, "shutting down")
	}
	m := t.hosts
	path := "hosts/" + name
	if parent != nil {
		if parent.subhosts == nil {
			parent.subhosts = map[string]*Host{}
		}
		m = parent.subhosts
		path = parent.path + "/subhosts/" + name
	}
	if _, ok := m[name]; ok {
		return nil, machine.Errorf(syscall.EEXIST, "%s exists", path)
	}
	h := &Host{
		tree:   t,
		parent: parent,
		name:   name,
		path:   path,
		id:     t.nextID.Add(1),
		log:    newEventLog(t.hostLog),
		cfg:    cf,
		state:  shownState{power: machine.PowerUnknown, reason: "no report from a driver yet"},
	}
	h.serial = newSerialHub(h)
	h.serialLog = newSerialLog(t.hostLog)
	m[name] = h
	return h, nil
}

func (t *Tree) detach(h *Host) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if h.parent == nil {
		delete(t.hosts, h.name)
	} else {
		delete(h.parent.subhosts, h.name)
	}
}

// Remove removes a host and its subhosts: EBUSY while any of them is on or
// has a command in flight.
func (t *Tree) Remove(ctx context.Context, h *Host, who Caller) error {
	if err := t.writable(); err != nil {
		return err
	}
	if why := t.busyTree(h); why != "" {
		return machine.Errorf(syscall.EBUSY, "%s", why)
	}
	if t.store != nil {
		if err := t.store.RemoveHost(h.path); err != nil {
			return machine.Errorf(syscall.EIO, "%v", err)
		}
	}
	t.detach(h)
	t.removeTree(ctx, h)
	h.emit(machine.EventRemoved, who.String())
	return nil
}

// removeTree releases what the drivers of h and its subhosts hold
// (Remover), deepest first, then closes them.
func (t *Tree) removeTree(ctx context.Context, h *Host) {
	for _, s := range t.Hosts(h) {
		t.removeTree(ctx, s)
	}
	h.removeDrivers(ctx)
}

func (t *Tree) busyTree(h *Host) string {
	for _, s := range t.Hosts(h) {
		if why := t.busyTree(s); why != "" {
			return why
		}
	}
	return h.busy()
}

func (t *Tree) closeTree(h *Host) {
	for _, s := range t.Hosts(h) {
		t.closeTree(s)
	}
	h.closeDrivers()
}

// CtlTable is the command table of the ctl file at the root of the tree.
var CtlTable = cmdtab.Table{File: "ctl", Fold: true, Cmds: []cmdtab.Cmd{
	{Name: "add", Args: "NAME [KEY=VALUE ...]", Min: 1, Max: 1, Opts: []string{cmdtab.AnyKey}, Help: "add a host with these config keys (NAME may be PARENT/subhosts/SUB)"},
	{Name: "remove", Args: "NAME", Min: 1, Max: 1, Help: "remove a host and its subhosts (EBUSY while one is on)"},
}}

// Ctl runs the lines of one write to the ctl file (CtlTable).
//
// Every line is checked before any runs (syntax, names, keys, privileges,
// whether the host exists or is busy), so a write with a bad line changes
// nothing. A line that passes its check can still fail when it runs (a host
// powered on in between); the lines before it then stay done, as a
// sequence of writes would.
func (t *Tree) Ctl(ctx context.Context, text string, who Caller) error {
	err := t.ctl(ctx, text, who)
	if err != nil {
		// The reason goes to events too: the shell only prints the errno.
		t.publish(Event{Time: time.Now(), Kind: machine.EventCtl, Detail: fmt.Sprintf("%q %s refused: %v", strings.TrimSpace(text), who, err)})
	}
	return err
}

// ctlOp is one checked line of a ctl write.
type ctlOp struct {
	add    bool
	parent *Host
	name   string
	path   string
	cf     *ConfigFile
	host   *Host // remove
}

func (t *Tree) ctl(ctx context.Context, text string, who Caller) error {
	if err := checkPrintable("ctl", text); err != nil {
		return err
	}
	var ops []ctlOp
	adding := map[string]bool{}
	for line := range cmdtab.Lines(text) {
		op, err := t.parseCtl(line, who)
		if err != nil {
			return err
		}
		if adding[op.path] {
			return machine.Errorf(syscall.EINVAL, "ctl: %s appears twice in one write", op.path)
		}
		adding[op.path] = true
		ops = append(ops, *op)
	}
	for _, op := range ops {
		var err error
		if op.add {
			_, err = t.Add(ctx, op.parent, op.name, op.cf, who)
		} else {
			err = t.Remove(ctx, op.host, who)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// parseCtl checks one ctl line, which is not blank.
func (t *Tree) parseCtl(line string, who Caller) (*ctlOp, error) {
	l, err := CtlTable.Parse(line)
	if err != nil {
		return nil, err
	}
	arg := l.Args[0]
	path := "hosts/" + strings.TrimPrefix(strings.Trim(arg, "/"), "hosts/")
	switch l.Cmd.Name {
	case "add":
		if err := t.writable(); err != nil {
			return nil, err
		}
		parentPath, name := splitHostPath(path)
		var parent *Host
		if parentPath != "" {
			if parent = t.Host(parentPath); parent == nil {
				return nil, machine.Errorf(syscall.ENOENT, "ctl: no host %s", parentPath)
			}
		} else if path != "hosts/"+name {
			return nil, machine.Errorf(syscall.EINVAL, "ctl: %q: subhosts are NAME/subhosts/SUB", arg)
		}
		if !ValidName(name) {
			return nil, machine.Errorf(syscall.EINVAL, "%q is not a valid name (letters, digits, '.', '_', '-'; at most 63)", name)
		}
		if t.Host(path) != nil {
			return nil, machine.Errorf(syscall.EEXIST, "%s exists", path)
		}
		cf := &ConfigFile{}
		for _, o := range l.Opts {
			if err := t.checkKey(o.Key, o.Value); err != nil {
				return nil, err
			}
			cf.Set(o.Key, o.Value)
		}
		if err := t.checkPrivileged(who, nil, cf); err != nil {
			return nil, err
		}
		if err := t.checkPlacement(nil, parent, cf); err != nil {
			return nil, err
		}
		return &ctlOp{add: true, parent: parent, name: name, path: path, cf: cf}, nil
	case "remove":
		if err := t.writable(); err != nil {
			return nil, err
		}
		h := t.Host(path)
		if h == nil {
			return nil, machine.Errorf(syscall.ENOENT, "ctl: no host %s", path)
		}
		if why := t.busyTree(h); why != "" {
			return nil, machine.Errorf(syscall.EBUSY, "%s", why)
		}
		return &ctlOp{host: h, path: path}, nil
	}
	return nil, machine.Errorf(syscall.EINVAL, "ctl: %s is in the table but not handled", l.Cmd.Name)
}

// splitHostPath splits "hosts/a/subhosts/b" into "hosts/a" and "b".
func splitHostPath(path string) (parent, name string) {
	i := strings.LastIndex(path, "/subhosts/")
	if i < 0 {
		return "", strings.TrimPrefix(path, "hosts/")
	}
	return path[:i], path[i+len("/subhosts/"):]
}

// Load reads the config store and creates every host in it. Files that do
// not parse are reported and skipped; they are left untouched on disk.
func (t *Tree) Load(ctx context.Context) error {
	if t.store == nil {
		return nil
	}
	t.store.Clean(t.log)
	stored, err := t.storedHosts()
	if err != nil {
		return err
	}
	for _, sh := range stored {
		t.loadOne(ctx, sh)
	}
	return t.loadGroups()
}

// StoredHost is one host read from the store, its config parsed.
type StoredHost struct {
	Path   string // tree path, e.g. "hosts/lab01/subhosts/vm1"
	Config *ConfigFile
	Err    error // the config could not be read or parsed
}

// storedHosts reads every host of the store, parents before their
// subhosts, and parses their configs.
func (t *Tree) storedHosts() ([]StoredHost, error) {
	hosts, err := t.store.Hosts()
	if err != nil {
		return nil, err
	}
	out := make([]StoredHost, len(hosts))
	for i, h := range hosts {
		out[i] = StoredHost{Path: h.Path, Err: h.Err}
		if h.Err == nil {
			out[i].Config, out[i].Err = ParseConfig(string(h.Text))
		}
	}
	return out, nil
}

// storedPlace is where a stored host goes: its parent (nil under
// hosts/) and name. ok is false when its config could not be read
// (reported) or its parent is not in the tree.
func (t *Tree) storedPlace(sh StoredHost) (parent *Host, name string, ok bool) {
	if sh.Err != nil {
		t.publish(Event{Time: time.Now(), Path: sh.Path, Kind: machine.EventError, Detail: "config: " + sh.Err.Error()})
		return nil, "", false
	}
	parentPath, name := splitHostPath(sh.Path)
	if parentPath != "" {
		if parent = t.Host(parentPath); parent == nil {
			return nil, "", false
		}
	}
	return parent, name, true
}

func (t *Tree) loadOne(ctx context.Context, sh StoredHost) {
	parent, name, ok := t.storedPlace(sh)
	if !ok {
		return
	}
	for _, k := range sh.Config.Keys() {
		v, _ := sh.Config.Get(k)
		if err := t.checkStoredKey(k, v); err != nil {
			t.publish(Event{Time: time.Now(), Path: sh.Path, Kind: machine.EventError, Detail: "config: " + err.Error()})
		}
	}
	if h := t.Host(sh.Path); h != nil {
		h.replaceConfig(ctx, sh.Config)
		return
	}
	h, err := t.insert(parent, name, sh.Config)
	if err != nil {
		return
	}
	h.emit(machine.EventAdded, "from config")
	h.rebuildDrivers(ctx)
}

// Reload re-reads the config store (SIGHUP): new files add hosts, changed
// files reconfigure them, hosts whose files are gone are removed unless
// they are busy.
func (t *Tree) Reload(ctx context.Context) error {
	if t.store == nil {
		return nil
	}
	stored, err := t.storedHosts()
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, sh := range stored {
		seen[sh.Path] = true
		t.loadOne(ctx, sh)
	}
	var walk func(parent *Host)
	walk = func(parent *Host) {
		for _, h := range t.Hosts(parent) {
			if !seen[h.path] {
				if why := t.busyTree(h); why != "" {
					h.emit(machine.EventError, "config file gone but host kept: "+why)
					continue
				}
				t.detach(h)
				t.removeTree(ctx, h)
				h.emit(machine.EventRemoved, "config file gone")
				continue
			}
			walk(h)
		}
	}
	walk(nil)
	t.publish(Event{Time: time.Now(), Kind: machine.EventReload, Detail: fmt.Sprintf("%d hosts", len(stored))})
	return nil
}

// Close closes every driver. The tree refuses new hosts afterwards.
func (t *Tree) Close() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	var wg sync.WaitGroup
	for _, h := range t.Hosts(nil) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t.closeTree(h)
		}()
	}
	wg.Wait()
}

func (t *Tree) saveConfig(path string, cf *ConfigFile) error {
	if t.store == nil {
		return nil
	}
	secret := false
	for _, k := range cf.Keys() {
		secret = secret || t.IsSecret(k)
	}
	text := cf.Render(nil)
	t.expectEcho(path, text)
	return t.store.SaveHost(path, []byte(text), secret)
}

// keySpec finds a key among the core keys and every driver's keys.
func (t *Tree) keySpec(key string) (machine.KeySpec, bool) {
	for _, k := range coreKeys {
		if k.Name == key {
			return k, true
		}
	}
	for _, name := range t.driverNames() {
		for _, k := range t.specs[name].Keys {
			if k.Name == key {
				return k, true
			}
		}
	}
	return machine.KeySpec{}, false
}

func (t *Tree) driverNames() []string {
	return slices.Sorted(maps.Keys(t.specs))
}

// IsSecret says whether key holds a secret: it reads back as "<set>" and
// is never logged.
func (t *Tree) IsSecret(key string) bool {
	k, ok := t.keySpec(key)
	return ok && k.Secret
}

func (t *Tree) checkKey(key, value string) error {
	if err := t.checkStoredKey(key, value); err != nil {
		return err
	}
	return t.checkAgents(key, value)
}

// checkStoredKey is checkKey for a config read from the store: the
// agents it names are not checked, since at load this agent may not have
// heard of them yet.
func (t *Tree) checkStoredKey(key, value string) error {
	k, ok := t.keySpec(key)
	if !ok {
		return machine.Errorf(syscall.EINVAL, "unknown key %q (see README: config keys)", key)
	}
	if key == "drivers" || key == "driver" {
		for _, n := range driverNames(value) {
			if _, ok := t.specs[n]; !ok {
				return machine.Errorf(syscall.EINVAL, "%s: unknown driver %q (have: %s)", key, n, strings.Join(t.driverNames(), ", "))
			}
		}
		return nil
	}
	// The kind's parser, the one the drivers read the value with: EINVAL
	// naming the key.
	return k.Check(value)
}

// KeyDocs lists every config key for documentation: core keys, then each
// driver's.
func (t *Tree) KeyDocs() []machine.KeySpec {
	out := append([]machine.KeySpec(nil), coreKeys...)
	for _, n := range t.driverNames() {
		out = append(out, t.specs[n].Keys...)
	}
	return out
}

// DriverSpecs lists the registered drivers.
func (t *Tree) DriverSpecs() []machine.DriverSpec {
	var out []machine.DriverSpec
	for _, n := range t.driverNames() {
		out = append(out, t.specs[n])
	}
	return out
}
