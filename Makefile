# machinefs: the two commands a new user needs are `make demo` and `make test`.
GO            ?= go
STATICCHECK   := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Debian packages the tests drive: inotifywait, fusermount3, ipmi_sim and
# ipmitool and socat (IPMI driver and its serial console), ip (network
# namespaces), setpriv (access tests); linux and uml_mconsole (UML
# subhosts), busybox-static and mkfs.ext4 (guest roots and disk images),
# sfdisk (partitioned disk images); vim, perl and ansible-core (tools_test.go);
# qemu-system-x86, qemu-utils and linux-image-amd64 (QEMU guests: the
# emulator, qemu-img, a kernel to boot), vde2 (VDE switches),
# freeipmi-tools (ipmipower, the group benchmark's baseline); openssh-server,
# openssh-client and ethtool (the ssh driver's test machines).
DEB_PACKAGES  := inotify-tools fuse3 openipmi ipmitool socat iproute2 util-linux procps \
                 user-mode-linux uml-utilities busybox-static e2fsprogs file fdisk rsync \
                 vim perl ansible-core qemu-system-x86 qemu-utils linux-image-amd64 vde2 \
                 freeipmi-tools openssh-server openssh-client ethtool
VERSION       ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS       := -X main.version=$(VERSION)

.PHONY: all build demo test deps check bench install clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/machinefs ./cmd/machinefs

# The embedded demo: simulated machines, nothing to configure. Ctrl-C
# unmounts. Needs root (or fuse3's fusermount3 for a user mount).
demo: build
	mkdir -p mnt
	./bin/machinefs --demo ./mnt

# Everything the tests need, then every test with the race detector.
test: deps check
	$(GO) test -race -count=1 -timeout 20m ./...

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	$(GO) mod download

check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

# Benchmarks with ratios against tmpfs measured in the same run.
bench: build
	$(GO) test -run '^$$' -bench . -benchtime 2s -timeout 60m ./tests/

install: build
	install -D -m 0755 bin/machinefs $(DESTDIR)/usr/local/bin/machinefs
	mkdir -p $(DESTDIR)/sbin
	ln -sf /usr/local/bin/machinefs $(DESTDIR)/sbin/mount.fuse.machinefs
	install -D -m 0644 contrib/machinefs.service $(DESTDIR)/etc/systemd/system/machinefs.service
	install -D -m 0644 contrib/machinefs.8 $(DESTDIR)/usr/local/share/man/man8/machinefs.8

clean:
	rm -rf bin
