// Command k8s-control-plane is a multi-call binary: argv[1] picks the
// component (the control plane, and kubelet and kube-proxy for the real nodes). One binary instead of four shares most of the link and disk
// cost, which matters on small CI machines. etcd is built in from the same
// go.etcd.io/etcd/server/v3 release that this Kubernetes release is tested
// against, so no distribution package (Debian ships 3.4) is needed.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

var components = map[string]func() *cobra.Command{
	"apiserver":          apiserver.NewAPIServerCommand,
	"controller-manager": controllermanager.NewControllerManagerCommand,
	"scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
	"kubelet":            func() *cobra.Command { return kubelet.NewKubeletCommand(context.Background()) },
	"kube-proxy":         proxy.NewProxyCommand,
}

func main() {
	if len(os.Args) >= 2 && os.Args[1] == "etcd" {
		// etcd parses its own flag set from args[1:].
		etcdmain.Main(append([]string{"etcd"}, os.Args[2:]...))
		return
	}
	if len(os.Args) < 2 || components[os.Args[1]] == nil {
		fmt.Fprintf(os.Stderr, "usage: %s etcd|apiserver|controller-manager|scheduler|kubelet|kube-proxy [flags]\n",
			filepath.Base(os.Args[0]))
		os.Exit(2)
	}
	cmd := components[os.Args[1]]()
	// cobra reads os.Args[1:] by default; skip the component name.
	cmd.SetArgs(os.Args[2:])
	os.Exit(cli.Run(cmd))
}
