//go:build tools

// Package tools pins the image builder of the real nodes: BuildKit's daemon (its OCI worker runs
// build steps with runc, no Docker daemon) and its client. buildkit's go.mod carries exclude
// directives, which `go install pkg@version` refuses, so it is built from this module instead.
package tools

import (
	_ "github.com/moby/buildkit/cmd/buildctl"
	_ "github.com/moby/buildkit/cmd/buildkitd"
)
