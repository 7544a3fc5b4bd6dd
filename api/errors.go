package api

import (
	"encoding/json"
	"net/http"
)

// Error codes of the API, stable for programs (see the package doc).
const (
	CodeInvalidAddress      = "invalid_address"
	CodeInvalidParameter    = "invalid_parameter"
	CodeInvalidPath         = "invalid_path"
	CodeInvalidCursor       = "invalid_cursor"
	CodeUnauthorized        = "unauthorized"
	CodeNotFound            = "not_found"
	CodeMethodNotAllowed    = "method_not_allowed"
	CodeObjectCorrupt       = "object_corrupt"
	CodeObjectMissing       = "object_missing"
	CodeObjectDeleted       = "object_deleted"
	CodeRangeNotSatisfiable = "range_not_satisfiable"
	CodeUnavailable         = "unavailable"
	CodeInternal            = "internal"
)

// ErrorBody is the JSON of every error response.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is a stable code and a message for people.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// apiError is an error response decided by a handler.
type apiError struct {
	status int
	code   string
	msg    string
}

func (e *apiError) Error() string { return e.code + ": " + e.msg }

func writeError(w http.ResponseWriter, e *apiError) {
	h := w.Header()
	// Headers set for a success that did not happen must not leak into
	// the error.
	for _, k := range []string{"Etag", "Repr-Digest", "Digest", "Accept-Ranges", "Content-Length", "Cache-Control", "Last-Modified"} {
		h.Del(k)
	}
	writeJSON(w, e.status, ErrorBody{Error: ErrorDetail{Code: e.code, Message: e.msg}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}
