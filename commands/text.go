package commands

import (
	"fmt"
	"unicode"
	"unicode/utf8"
)

// TextKind says which control characters a text field may hold.
type TextKind int

const (
	// Line is one line of text (names, paths, classes, actors): no control
	// character at all.
	Line TextKind = iota
	// Lines is free text (reasons, metadata values): tab, line feed and
	// carriage return are allowed, no other control character.
	Lines
)

// CheckText reports why s cannot be text of the store: invalid UTF-8, a
// NUL (PostgreSQL text and jsonb cannot hold one, so such a string would
// fail the database rather than the request), or another control
// character (C0, DEL or C1) except those kind allows. The error names the
// first offending character and its byte offset; nil means s is fine.
// Commands (ValidateText) and the read API's parameters share this rule,
// so whatever a command can store, the API can name, and what it cannot
// store is refused at both doors the same way.
func CheckText(s string, kind TextKind) error {
	for i, r := range s {
		switch {
		case r == utf8.RuneError && isInvalidAt(s, i):
			return fmt.Errorf("is not valid UTF-8 at byte offset %d", i)
		case r == 0:
			return fmt.Errorf("has a NUL byte at byte offset %d", i)
		case kind == Lines && (r == '\t' || r == '\n' || r == '\r'):
		case unicode.IsControl(r):
			return fmt.Errorf("has control character %U at byte offset %d", r, i)
		}
	}
	return nil
}

// isInvalidAt tells an encoding error at offset i from a literal U+FFFD.
func isInvalidAt(s string, i int) bool {
	_, size := utf8.DecodeRuneInString(s[i:])
	return size == 1
}

// ValidateText checks a text field of a command: at most max bytes (max 0:
// no limit) of text that passes CheckText. A failure is an *Error with
// code that names field and quotes the value.
func ValidateText(code, field, s string, max int, kind TextKind) error {
	if max > 0 && len(s) > max {
		return Rejectf(code, "%s is %d bytes, more than %d", field, len(s), max)
	}
	if err := CheckText(s, kind); err != nil {
		what := "tabs and line breaks are the only control characters allowed"
		if kind == Line {
			what = "control characters are refused"
		}
		return Rejectf(code, "%s %q %v; send UTF-8 text without NUL bytes (%s)", field, trunc(s), err, what)
	}
	return nil
}

// recordable returns s when a rejection may echo it (in its reply and
// event, and in the ingester's look-ups of the package) and "" otherwise:
// an unrecordable value is named only in the rejection's reason, quoted.
func recordable(s string) string {
	if len(s) > MaxPath || CheckText(s, Line) != nil {
		return ""
	}
	return s
}
