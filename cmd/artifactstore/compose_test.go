package main

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/alecthomas/kong"
	"go.yaml.in/yaml/v3"

	"github.com/artifactstore/artifactstore/storage/s3"
)

// composeFile is the part of docker-compose.yml the test checks.
type composeFile struct {
	Services map[string]struct {
		Image       string            `yaml:"image"`
		Build       any               `yaml:"build"`
		Command     []string          `yaml:"command"`
		Environment map[string]string `yaml:"environment"`
		Volumes     []string          `yaml:"volumes"`
		Profiles    []string          `yaml:"profiles"`
		DependsOn   map[string]struct {
			Condition string `yaml:"condition"`
		} `yaml:"depends_on"`
		Deploy struct {
			Replicas int `yaml:"replicas"`
		} `yaml:"deploy"`
		Healthcheck *struct {
			Test []string `yaml:"test"`
		} `yaml:"healthcheck"`
	} `yaml:"services"`
	Volumes map[string]any `yaml:"volumes"`
}

// cliModel returns the command paths and environment variables the binary
// understands.
func cliModel(t *testing.T) (commands map[string]bool, envs map[string]bool) {
	t.Helper()
	var c cli
	parser, err := kong.New(&c, kong.DefaultEnvars("ARTIFACTSTORE"), kong.BindTo(context.Background(), (*context.Context)(nil)))
	if err != nil {
		t.Fatal(err)
	}
	commands, envs = map[string]bool{}, map[string]bool{}
	var walk func(n *kong.Node, prefix string)
	walk = func(n *kong.Node, prefix string) {
		for _, f := range n.Flags {
			for _, e := range f.Envs {
				envs[e] = true
			}
		}
		for _, ch := range n.Children {
			if ch.Type != kong.CommandNode {
				continue
			}
			path := strings.TrimSpace(prefix + " " + ch.Name)
			commands[path] = true
			walk(ch, path)
		}
	}
	walk(parser.Model.Node, "")
	return commands, envs
}

// TestComposeFile parses docker-compose.yml (no Docker engine runs here)
// and checks it against the binary: every service runs a real verb with
// environment variables the binary reads, the roles are all there, the
// scaled roles are scaled, and the schema is migrated before any worker
// starts.
func TestComposeFile(t *testing.T) {
	t.Parallel()
	root := filepath.Join("..", "..")
	b, err := os.ReadFile(filepath.Join(root, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var f composeFile
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("docker-compose.yml does not parse: %v", err)
	}
	commands, envs := cliModel(t)

	for _, want := range []string{"nats", "postgres", "migrate", "topology", "ingest", "project", "verify", "reap", "serve", "relay", "replicate"} {
		if _, ok := f.Services[want]; !ok {
			t.Errorf("service %q is missing", want)
		}
	}
	for name, s := range f.Services {
		if s.Image != "artifactstore:latest" {
			continue
		}
		if s.Build == nil {
			t.Errorf("service %s uses the artifactstore image but does not build it", name)
		}
		if len(s.Command) > 0 {
			verb := s.Command[0]
			if len(s.Command) > 1 && !strings.HasPrefix(s.Command[1], "-") {
				verb += " " + s.Command[1]
			}
			if !commands[verb] {
				t.Errorf("service %s runs %q, which is not an artifactstore command", name, verb)
			}
		}
		for k := range s.Environment {
			if strings.HasPrefix(k, "ARTIFACTSTORE_") && !envs[k] {
				t.Errorf("service %s sets %s, which no flag reads", name, k)
			}
		}
		if name != "migrate" && name != "topology" && len(s.Profiles) == 0 {
			if s.DependsOn["migrate"].Condition != "service_completed_successfully" {
				t.Errorf("service %s does not wait for the migration to complete", name)
			}
			// The roles only check the JetStream topology; it must exist.
			if s.DependsOn["topology"].Condition != "service_completed_successfully" {
				t.Errorf("service %s does not wait for 'topology apply' to complete", name)
			}
		}
		for _, v := range s.Volumes {
			vol := strings.SplitN(v, ":", 2)[0]
			if !strings.HasPrefix(vol, ".") {
				if _, ok := f.Volumes[vol]; !ok {
					t.Errorf("service %s mounts undeclared volume %q", name, vol)
				}
			} else if _, err := os.Stat(filepath.Join(root, vol)); err != nil {
				t.Errorf("service %s mounts %s: %v", name, vol, err)
			}
		}
	}
	if f.Services["migrate"].Command == nil || strings.Join(f.Services["migrate"].Command, " ") != "migrate up" {
		t.Errorf("migrate service runs %v, want [migrate up]", f.Services["migrate"].Command)
	}
	if got := strings.Join(f.Services["topology"].Command, " "); got != "topology apply" {
		t.Errorf("topology service runs %q, want topology apply", got)
	}
	for _, scaled := range []string{"ingest", "verify"} {
		if f.Services[scaled].Deploy.Replicas < 2 {
			t.Errorf("service %s is not scaled out (deploy.replicas = %d)", scaled, f.Services[scaled].Deploy.Replicas)
		}
	}
	checkComposeStorage(t, &f)
	for _, dep := range []string{"nats", "postgres", "minio"} {
		if f.Services[dep].Healthcheck == nil {
			t.Errorf("service %s has no healthcheck, so depends_on cannot wait for it", dep)
		}
	}
}

// checkComposeStorage checks that every role keeps its bytes on the
// compose file's S3 store: ARTIFACTSTORE_STORAGE is a valid s3:// URL whose
// endpoint is a service of the file, the credentials are in the AWS SDK's
// environment variables (not in the URL) and match the store's, and each
// role waits for the store and for the service that creates its bucket.
func checkComposeStorage(t *testing.T, f *composeFile) {
	t.Helper()
	minio, ok := f.Services["minio"]
	if !ok {
		t.Fatal("service minio is missing")
	}
	roles := 0
	for name, s := range f.Services {
		if s.Image != "artifactstore:latest" || name == "migrate" || name == "topology" || len(s.Profiles) > 0 {
			continue
		}
		roles++
		raw := s.Environment["ARTIFACTSTORE_STORAGE"]
		cfg, err := s3.ParseURL(raw)
		if err != nil {
			t.Errorf("service %s: ARTIFACTSTORE_STORAGE %q: %v", name, raw, err)
			continue
		}
		u, err := url.Parse(cfg.Endpoint)
		if err != nil || f.Services[u.Hostname()].Image == "" {
			t.Errorf("service %s: the storage endpoint %q is not a service of the compose file", name, cfg.Endpoint)
		}
		if s.DependsOn[u.Hostname()].Condition != "service_healthy" {
			t.Errorf("service %s does not wait for %s to be healthy", name, u.Hostname())
		}
		if s.Environment["AWS_ACCESS_KEY_ID"] != minio.Environment["MINIO_ROOT_USER"] ||
			s.Environment["AWS_SECRET_ACCESS_KEY"] != minio.Environment["MINIO_ROOT_PASSWORD"] {
			t.Errorf("service %s: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are not minio's credentials", name)
		}
		made := false
		for dep, d := range s.DependsOn {
			ds := f.Services[dep]
			if d.Condition == "service_completed_successfully" && strings.Contains(strings.Join(ds.Command, " "), "mc mb --ignore-existing local/"+cfg.Bucket) {
				made = true
			}
		}
		if !made {
			t.Errorf("service %s does not wait for a service that creates bucket %s", name, cfg.Bucket)
		}
	}
	if roles < 5 {
		t.Fatalf("only %d role services checked", roles)
	}
}
