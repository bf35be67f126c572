//go:build tools

// Package lws pins the LeaderWorkerSet controller that runs in the local cluster (multi-node
// NIMServices). `go install sigs.k8s.io/lws/cmd@version` asks the module proxy for the module's version
// list to look for deprecations, which the proxy here refuses, so it is built from this module instead.
package lws

import (
	_ "sigs.k8s.io/lws/cmd"
)
