package archtest

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// TestOnlyCommandsDeclaresReplies fails when a non-test Go file outside
// commands declares a type whose name ends in "Reply": every command
// family's reply is declared in commands, so that clients read one shape
// with one set of codes, and a new family adds its fields there.
func TestOnlyCommandsDeclaresReplies(t *testing.T) {
	t.Parallel()
	fset := token.NewFileSet()
	files := 0
	for _, p := range listPackages(t) {
		if isUnder(p.ImportPath, module+"/commands") {
			continue
		}
		for _, name := range p.GoFiles {
			path := filepath.Join(p.Dir, name)
			f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
			if err != nil {
				t.Fatalf("parse %s: %v", path, err)
			}
			files++
			ast.Inspect(f, func(n ast.Node) bool {
				if ts, ok := n.(*ast.TypeSpec); ok && strings.HasSuffix(ts.Name.Name, "Reply") {
					t.Errorf("%s declares the reply type %s: declare a command family's reply in commands (commands.Reply)", fset.Position(ts.Pos()), ts.Name.Name)
				}
				return true
			})
		}
	}
	if files < 50 {
		t.Fatalf("read only %d Go files: the rule would check nothing", files)
	}
}
