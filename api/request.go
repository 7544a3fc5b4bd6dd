package api

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/artifactstore/artifactstore/commands"
)

// checkRequest refuses, before any route sees it, a request that no route
// can answer and that would otherwise reach PostgreSQL as text it cannot
// hold, or be cleaned and redirected by the router:
//
//   - a method other than GET and HEAD: 405 method_not_allowed;
//   - a path segment that is ".", "..", raw or percent-encoded, or empty
//     ("//"; a trailing "/" is fine), or that decodes to invalid UTF-8, a
//     NUL or a control character: 400 invalid_path;
//   - a query that does not parse, or a name or value in it that is not
//     such text: 400 invalid_parameter.
//
// The text rule is the commands' (commands.CheckText), so a name or path
// the API refuses is one no command could have stored.
func checkRequest(r *http.Request) *apiError {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return &apiError{status: http.StatusMethodNotAllowed, code: CodeMethodNotAllowed,
			msg: fmt.Sprintf("method %s is not allowed; the read API answers GET and HEAD", r.Method)}
	}
	raw := r.URL.EscapedPath()
	segs := strings.Split(strings.TrimPrefix(raw, "/"), "/")
	for i, seg := range segs {
		if seg == "" {
			if i == len(segs)-1 {
				break // a trailing slash
			}
			return badPath("path %q has an empty segment (\"//\"); remove the extra slash", clip(raw))
		}
		dec, err := url.PathUnescape(seg)
		if err != nil {
			return badPath("path segment %q is not valid percent-encoding", clip(seg))
		}
		if dec == "." || dec == ".." {
			return badPath("path %q has a %q segment (raw or percent-encoded); such paths are refused, not resolved: "+
				"name the package and file directly, and send a '/' inside a package name as %%2F", clip(raw), dec)
		}
		if err := commands.CheckText(dec, commands.Line); err != nil {
			return badPath("path segment %q %v; names and paths are UTF-8 text without NUL bytes or control characters", clip(seg), err)
		}
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return badParam("the query %q does not parse: %v; percent-encode special characters and separate parameters with '&'", clip(r.URL.RawQuery), err)
	}
	for k, vs := range q {
		if err := commands.CheckText(k, commands.Line); err != nil {
			return badParam("query parameter name %q %v", clip(k), err)
		}
		for _, v := range vs {
			if err := commands.CheckText(v, commands.Line); err != nil {
				return badParam("%s=%q %v; parameters are UTF-8 text without NUL bytes or control characters", clip(k), clip(v), err)
			}
		}
	}
	return nil
}

func badPath(format string, args ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, code: CodeInvalidPath, msg: fmt.Sprintf(format, args...)}
}

// clip shortens what a message echoes of a request.
func clip(s string) string {
	if len(s) > 100 {
		return s[:100] + "…"
	}
	return s
}
