package archtest

import (
	"go/ast"
	"go/token"
	"testing"
)

// testFixtures are the packages that start and stop servers for tests;
// their Start and Stop take a testing.TB, not a context.
var testFixtures = []string{"/internal/natstest", "/internal/pgcluster", "/internal/pgtest", "/internal/s3test"}

// TestOneLifecycle fails when a method named Start or Stop in a non-test
// Go file has any other signature than the lifecycle of internal/service,
// Start(ctx context.Context) error and Stop(ctx context.Context) error:
// every worker, loop, consumer and server starts and stops one way, so
// that `run` and every role are lists of services (docs/architecture.md,
// "A new worker role").
func TestOneLifecycle(t *testing.T) {
	t.Parallel()
	var fixtures []string
	for _, f := range testFixtures {
		fixtures = append(fixtures, module+f)
	}
	methods := 0
	forEachFile(t, fixtures, func(fset *token.FileSet, f *ast.File) {
		for _, d := range f.Decls {
			fd, ok := d.(*ast.FuncDecl)
			if !ok || fd.Recv == nil || (fd.Name.Name != "Start" && fd.Name.Name != "Stop") {
				continue
			}
			methods++
			if !lifecycleSignature(fd.Type) {
				t.Errorf("%s: %s has not the lifecycle's signature: use %s(ctx context.Context) error (package internal/service)", fset.Position(fd.Pos()), fd.Name.Name, fd.Name.Name)
			}
		}
	})
	if methods < 10 {
		t.Fatalf("found only %d Start and Stop methods: the rule would check nothing", methods)
	}
}

// lifecycleSignature reports whether ft is func(context.Context) error.
func lifecycleSignature(ft *ast.FuncType) bool {
	params := ft.Params.List
	if len(params) != 1 || len(params[0].Names) > 1 || !isSelector(params[0].Type, "context", "Context") {
		return false
	}
	if ft.Results == nil || len(ft.Results.List) != 1 || len(ft.Results.List[0].Names) > 1 {
		return false
	}
	id, ok := ft.Results.List[0].Type.(*ast.Ident)
	return ok && id.Name == "error"
}

func isSelector(e ast.Expr, pkg, name string) bool {
	sel, ok := e.(*ast.SelectorExpr)
	if !ok {
		return false
	}
	x, ok := sel.X.(*ast.Ident)
	return ok && x.Name == pkg && sel.Sel.Name == name
}
