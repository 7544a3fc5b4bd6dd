package service

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
)

// Ender is a service that can end on its own, before Stop: a [Loop]
// whose function returned. [Group.Wait] watches the members that are
// Enders.
type Ender interface {
	// Done is closed when the service ended.
	Done() <-chan struct{}
	// Err is why it ended (nil: it finished, or was stopped).
	Err() error
}

// Named is a service with the name it has in a [Group]'s errors.
type Named struct {
	Name    string
	Service Service
}

// Group is a list of services started in order and stopped in reverse
// order: a process's roles. It is itself a Service (so groups nest), and
// follows the lifecycle: a second Start, or a Start after Stop, fails.
type Group struct {
	members []Named
	state   State
	started int // members started; read after Start
	hooks   Hooks
}

// Hooks are called around each member's start and stop; tests inject
// points there. The zero value calls nothing.
type Hooks struct {
	// BeforeStart is called before a member starts; an error fails the
	// group's Start there (the members already started are stopped).
	BeforeStart func(name string) error
	// AfterStop is called after a member stopped, with Stop's error.
	AfterStop func(name string, err error)
}

// NewGroup returns a group of members, started in this order.
func NewGroup(members ...Named) *Group { return &Group{members: members} }

// SetHooks sets the hooks; call it before Start.
func (g *Group) SetHooks(h Hooks) { g.hooks = h }

// Add appends a member; call it before Start.
func (g *Group) Add(name string, s Service) { g.members = append(g.members, Named{name, s}) }

// Members returns the members in start order.
func (g *Group) Members() []Named { return append([]Named(nil), g.members...) }

// Start starts the members in order. When one fails, the members already
// started are stopped in reverse order (ctx's values, no deadline: a soft
// stop) and the error names the member.
func (g *Group) Start(ctx context.Context) error {
	return g.state.TryStart(func() error {
		for i, m := range g.members {
			if g.hooks.BeforeStart != nil {
				if err := g.hooks.BeforeStart(m.Name); err != nil {
					g.stopFirst(context.WithoutCancel(ctx), i)
					return fmt.Errorf("start %s: %w", m.Name, err)
				}
			}
			if err := m.Service.Start(ctx); err != nil {
				g.stopFirst(context.WithoutCancel(ctx), i)
				return fmt.Errorf("start %s: %w", m.Name, err)
			}
		}
		g.started = len(g.members)
		return nil
	})
}

// Stop stops the started members in reverse order, all within ctx: once
// ctx is done every remaining member gets a hard stop. The errors of the
// members are joined, each naming its member.
func (g *Group) Stop(ctx context.Context) error {
	if !g.state.MarkStopped() {
		return nil
	}
	return g.stopFirst(ctx, g.started)
}

func (g *Group) stopFirst(ctx context.Context, n int) error {
	var errs []error
	for i := n - 1; i >= 0; i-- {
		m := g.members[i]
		err := m.Service.Stop(ctx)
		if g.hooks.AfterStop != nil {
			g.hooks.AfterStop(m.Name, err)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("stop %s: %w", m.Name, err))
		}
	}
	return errors.Join(errs...)
}

// Wait blocks until ctx is done (it returns nil) or a member that is an
// [Ender] (nested groups and [Parallel] included) ended with an error
// (it returns that error, naming the member). A member that ends without
// an error is let be. Call it after a successful Start.
func (g *Group) Wait(ctx context.Context) error {
	enders := g.enders()
	cases := []reflect.SelectCase{{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ctx.Done())}}
	for _, e := range enders {
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(e.Done())})
	}
	for {
		i, _, _ := reflect.Select(cases)
		if i == 0 {
			return nil
		}
		e := enders[i-1]
		if err := e.Err(); err != nil {
			return fmt.Errorf("%s: %w", e.name, err)
		}
		// Ended cleanly: stop watching it.
		cases[i].Chan = reflect.ValueOf((<-chan struct{})(nil))
	}
}

type namedEnder struct {
	Ender
	name string
}

func (g *Group) enders() []namedEnder {
	var out []namedEnder
	var walk func(prefix string, ms []Named)
	walk = func(prefix string, ms []Named) {
		for _, m := range ms {
			name := prefix + m.Name
			switch s := m.Service.(type) {
			case *Group:
				walk(name+"/", s.members)
			case *Parallel:
				walk(name+"/", s.members)
			case Ender:
				out = append(out, namedEnder{s, name})
			}
		}
	}
	walk("", g.members)
	return out
}

// Parallel is a list of services started in order and stopped all at
// once, each with the same ctx: consumers that drain side by side, so
// that one slow drain does not eat the others' time.
type Parallel struct {
	members []Named
	group   Group // start bookkeeping and rollback
}

// NewParallel returns the services as one, stopped concurrently.
func NewParallel(members ...Named) *Parallel {
	return &Parallel{members: members, group: Group{members: members}}
}

// Start starts the members in order; see [Group.Start].
func (p *Parallel) Start(ctx context.Context) error { return p.group.Start(ctx) }

// Stop stops every started member concurrently within ctx and joins their
// errors.
func (p *Parallel) Stop(ctx context.Context) error {
	if !p.group.state.MarkStopped() {
		return nil
	}
	errs := make([]error, p.group.started)
	var wg sync.WaitGroup
	for i, m := range p.members[:p.group.started] {
		wg.Go(func() {
			if err := m.Service.Stop(ctx); err != nil {
				errs[i] = fmt.Errorf("stop %s: %w", m.Name, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Members returns the members in start order.
func (p *Parallel) Members() []Named { return append([]Named(nil), p.members...) }
