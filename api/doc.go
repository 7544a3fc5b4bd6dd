// Package api is the HTTP read API of artifactstore: objects by content
// address, packages, the files of a package, and whole packages as tar
// streams. It is stateless (a PostgreSQL pool for the projection tables and
// a data plane for the bytes), so any number of servers can run side by
// side. It reads the projections only; it never writes and never names a
// concrete storage backend.
//
// # Routes
//
//	GET|HEAD /v1/objects/{address}              the object's bytes
//	GET      /v1/packages                       packages, filtered and paginated
//	GET      /v1/packages/{name}                one package: files, retention, verification
//	GET      /v1/packages/{name}.tar            the whole package as a tar stream
//	GET|HEAD /v1/packages/{name}/files/{path...} one file's bytes
//
// Package names may contain "/" (e.g. "ci/run-42"); in a URL it must be
// percent-encoded as %2F ("/v1/packages/ci%2Frun-42/files/logs/build.txt"),
// because {name} is one path segment. Paths inside a package are sent as
// they are, slashes included. A {name} segment that ends in ".tar" always
// asks for the tar stream of the package named without the suffix; the
// JSON of a package whose own name ends in ".tar" is at the same URL with
// "?format=json".
//
// # Bytes
//
// An object is served under either of its content addresses: an object
// stored under its blake3 address (the default primary) is found by its
// sha256 address too, and the reverse, through the digest columns of
// storage_locations.
//
// Object and file responses stream the bytes (memory does not grow with the
// object) with Content-Length, Accept-Ranges: bytes, ETag (the quoted
// content address asked for, e.g. "sha256:…"; for a file its primary
// address), Repr-Digest: sha-256=:<base64>:
// (RFC 9530) and the legacy Digest: SHA-256=<base64> (RFC 3230), both the
// SHA-256 of the whole object. If-None-Match with the ETag, or with the
// object's other address, answers 304.
// A single byte range (bytes=a-b, bytes=a-, bytes=-n) answers 206 with
// Content-Range; an unsatisfiable one 416 with Content-Range: bytes */size.
// A request with several ranges gets the whole object (200), which RFC 9110
// allows. If-Range with the ETag (or the other address) is honoured. A
// whole-object response is re-digested while it streams; if the bytes do
// not match the recorded SHA-256 the connection is aborted, so a client
// never receives corrupt bytes as a complete, successful response.
//
// An object is served only from a storage location in state "ok". When no
// location is ok the request fails before any byte is sent, with the code
// of the worst state (corrupt, then missing, then deleted).
//
// # Errors
//
// Every error is JSON, {"error":{"code":"…","message":"…"}}: the code is
// stable and meant for programs, the message is for people and may change.
//
//	code                  status  meaning
//	invalid_address       400     the {address} is not <blake3|sha256>:<64 lowercase hex>
//	invalid_path          400     the URL path has a "." or ".." segment (raw or
//	                              percent-encoded), an empty segment, or a segment that
//	                              decodes to invalid UTF-8, a NUL or a control character;
//	                              or a file path no ingest could store
//	invalid_parameter     400     the query does not parse, holds such text, or a
//	                              parameter is malformed (limit, state, format)
//	invalid_cursor        400     the pagination cursor was not issued by this API
//	unauthorized          401     a bearer token is required and was missing or wrong
//	not_found             404     no such object, package, file or route
//	method_not_allowed    405     a method other than GET and HEAD
//	object_corrupt        409     the stored bytes failed verification; they are not served
//	object_missing        409     the backend does not hold the bytes it should
//	object_deleted        410     the bytes were deleted by retention
//	range_not_satisfiable 416     the Range lies outside the object
//	unavailable           503     PostgreSQL or the storage backend did not answer; retry
//	internal              500     anything else (logged with details)
//
// # Requests as sent
//
// The API sees its paths as they were sent (Server.Wrap goes in front of
// any http.ServeMux): a path with dot or empty segments is refused with
// 400, never cleaned and redirected, and names, paths and query values
// follow the commands' text rule (commands.CheckText), so that no request
// reaches PostgreSQL with text it cannot hold. FuzzRequest checks that no
// request yields a 5xx while PostgreSQL is up.
//
// # Authentication
//
// With Options.Token set, every route needs "Authorization: Bearer <token>"
// (compared in constant time); otherwise 401 with WWW-Authenticate: Bearer.
// Without a token the API is open, so the serve command binds it to a
// loopback address unless told otherwise (see CheckExposure).
package api
