package archtest

import (
	"go/ast"
	"go/token"
	"strings"
	"testing"
)

// TestOnlyCommandsDeclaresReplies fails when a non-test Go file outside
// commands declares a type whose name ends in "Reply": every command
// family's reply is declared in commands, so that clients read one shape
// with one set of codes, and a new family adds its fields there.
func TestOnlyCommandsDeclaresReplies(t *testing.T) {
	t.Parallel()
	forEachFile(t, []string{module + "/commands"}, func(fset *token.FileSet, f *ast.File) {
		ast.Inspect(f, func(n ast.Node) bool {
			if ts, ok := n.(*ast.TypeSpec); ok && strings.HasSuffix(ts.Name.Name, "Reply") {
				t.Errorf("%s declares the reply type %s: declare a command family's reply in commands (commands.Reply)", fset.Position(ts.Pos()), ts.Name.Name)
			}
			return true
		})
	})
}
