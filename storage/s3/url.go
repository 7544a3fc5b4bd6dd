package s3

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// ParseURL reads a backend's configuration from a URL:
//
//	s3://<bucket>[/<prefix>][?endpoint=<url>&region=<region>&path_style=true&profile=<name>&id=<backend id>&part_size=<bytes>&concurrency=<n>&checksums=false]
//
// e.g. s3://artifacts/objects?endpoint=http://127.0.0.1:9000&region=us-east-1&path_style=true.
// Credentials never go in the URL (it is logged and shown); they come
// from the standard places (see Open) or Config.Credentials. An unknown
// parameter is an error, so that a typo does not go unnoticed.
func ParseURL(raw string) (Config, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return Config{}, fmt.Errorf("s3: storage URL: %w; write it as s3://bucket/prefix?endpoint=<url>", err)
	}
	if u.Scheme != "s3" {
		return Config{}, fmt.Errorf("s3: storage URL %s: scheme %q is not s3; write it as s3://bucket/prefix", redacted(u), u.Scheme)
	}
	if u.User != nil {
		return Config{}, fmt.Errorf("s3: storage URL %s carries credentials; put them in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile (?profile=) or the --s3-* flags instead: the URL is logged", redacted(u))
	}
	cfg := Config{Bucket: u.Host, Prefix: strings.Trim(u.Path, "/")}
	if cfg.Bucket == "" {
		return Config{}, fmt.Errorf("s3: storage URL %s names no bucket; write it as s3://bucket/prefix", raw)
	}
	for k, vs := range u.Query() {
		v := vs[len(vs)-1]
		switch k {
		case "id":
			cfg.ID = v
		case "endpoint":
			eu, err := url.Parse(v)
			if err != nil || (eu.Scheme != "http" && eu.Scheme != "https") || eu.Host == "" {
				return Config{}, fmt.Errorf("s3: storage URL %s: endpoint %q is not an http:// or https:// URL", raw, v)
			}
			cfg.Endpoint = v
		case "region":
			cfg.Region = v
		case "profile":
			cfg.Profile = v
		case "path_style":
			if cfg.PathStyle, err = strconv.ParseBool(v); err != nil {
				return Config{}, fmt.Errorf("s3: storage URL %s: path_style=%q: use true or false", raw, v)
			}
		case "checksums":
			on, err := strconv.ParseBool(v)
			if err != nil {
				return Config{}, fmt.Errorf("s3: storage URL %s: checksums=%q: use true or false", raw, v)
			}
			cfg.NoChecksums = !on
		case "part_size":
			if cfg.PartSize, err = parseSize(v); err != nil {
				return Config{}, fmt.Errorf("s3: storage URL %s: part_size=%q: %w", raw, v, err)
			}
		case "concurrency":
			if cfg.Concurrency, err = strconv.Atoi(v); err != nil || cfg.Concurrency < 1 {
				return Config{}, fmt.Errorf("s3: storage URL %s: concurrency=%q: use a whole number of at least 1", raw, v)
			}
		default:
			return Config{}, fmt.Errorf("s3: storage URL %s: unknown parameter %q; known: id, endpoint, region, profile, path_style, checksums, part_size, concurrency", raw, k)
		}
	}
	return cfg, nil
}

// parseSize reads a byte count with an optional KiB, MiB or GiB suffix.
func parseSize(s string) (int64, error) {
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}} {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = rest, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("use a positive number of bytes, e.g. 16MiB")
	}
	return n * mult, nil
}

// redacted is u without its user information, for messages.
func redacted(u *url.URL) string {
	c := *u
	c.User = nil
	return c.String()
}
