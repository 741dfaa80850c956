package member

import (
	"context"
	"log/slog"
	"slices"
	"sort"
	"sync/atomic"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// ZapLogger returns a zap logger, as etcd's server and client want one,
// that hands records to log: the daemon keeps one log, in one format,
// where the user asked for it (log=). etcd logs a lot at info (every raft step at start), so its info
// becomes debug, and warnings and errors keep their level. A nil log gives
// a logger that drops everything.
func ZapLogger(log *slog.Logger) *zap.Logger { return zapLogger(log, nil) }

// zapLogger is ZapLogger whose records all become debug once quiet is set:
// a member that is being closed logs its listeners' "errors" (use of
// closed network connection, server closed), which are the closing itself.
func zapLogger(log *slog.Logger, quiet *atomic.Bool) *zap.Logger {
	if log == nil {
		return zap.NewNop()
	}
	if quiet == nil {
		quiet = new(atomic.Bool)
	}
	return zap.New(&slogCore{h: log.Handler().WithAttrs([]slog.Attr{slog.String("component", "etcd")}), quiet: quiet})
}

// benign are warnings etcd gives at every start that ask nothing of the
// user of an embedded member: agents speak gRPC, so sharing the client
// port with etcd's HTTP endpoints is harmless, and agents authenticate by
// client certificate, not by etcd's simple tokens. They are logged as
// debug.
var benign = map[string]bool{
	"Running http and grpc server on single port. This is not recommended for production.": true,
	"simple token is not cryptographically signed":                                         true,
}

// slogCore is a zapcore.Core writing to a slog.Handler.
type slogCore struct {
	h      slog.Handler
	fields []zapcore.Field // from With, written before each record's own
	quiet  *atomic.Bool    // shared by the cores With makes
}

func (c *slogCore) level(e zapcore.Entry) slog.Level {
	if c.quiet.Load() || benign[e.Message] {
		return slog.LevelDebug
	}
	return slogLevel(e.Level)
}

func slogLevel(l zapcore.Level) slog.Level {
	switch {
	case l < zapcore.WarnLevel:
		return slog.LevelDebug
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

func (c *slogCore) Enabled(l zapcore.Level) bool {
	return c.h.Enabled(context.Background(), slogLevel(l))
}

func (c *slogCore) With(fields []zapcore.Field) zapcore.Core {
	return &slogCore{h: c.h, fields: append(slices.Clip(c.fields), fields...), quiet: c.quiet}
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.h.Enabled(context.Background(), c.level(e)) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fields {
		f.AddTo(enc)
	}
	r := slog.NewRecord(e.Time, c.level(e), e.Message, 0)
	if e.LoggerName != "" {
		r.AddAttrs(slog.String("logger", e.LoggerName))
	}
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		keys = append(keys, k)
	}
	// A map has no order; sorted keys keep lines comparable.
	sort.Strings(keys)
	for _, k := range keys {
		r.AddAttrs(slog.Any(k, enc.Fields[k]))
	}
	return c.h.Handle(context.Background(), r)
}

func (c *slogCore) Sync() error { return nil }
