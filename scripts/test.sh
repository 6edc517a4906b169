#!/usr/bin/env bash
# Gantry's whole test suite, exactly as CI runs it (.ci/run calls this script).
# Installs what the build and the tests need when it is missing, then runs formatting,
# lints, every unit and end-to-end test, and the documentation build. Servers the tests
# need are started and stopped by the tests themselves, on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the build or the tests need: `command:package` pairs. libxslt1-dev and
# pkg-config build gantry-xslt, the engine of the `xslt` policy (the `xslt` feature, on here).
# etcd-server is the etcd member the cluster-mode tests run.
needed=()
for pair in cc:gcc curl:curl /usr/sbin/slapd:slapd ldapsearch:ldap-utils redis-server:redis-server promtool:prometheus \
  xslt-config:libxslt1-dev pkg-config:pkg-config etcd:etcd-server; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || needed+=("${pair#*:}")
done
if ((${#needed[@]})); then
  echo "installing: ${needed[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${needed[@]}"
fi

# npm packages the tests run (pinned), each in its own directory under target/test-tools where
# the tests look (one prefix per package, so installing one never prunes another).
oidc_provider=9.13.3
if ! grep -qs "\"version\": \"$oidc_provider\"" target/test-tools/oidc-provider/node_modules/oidc-provider/package.json; then
  command -v npm >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm; }
  echo "installing: oidc-provider@$oidc_provider"
  mkdir -p target/test-tools/oidc-provider
  npm install --prefix target/test-tools/oidc-provider --no-save --no-package-lock --no-audit --no-fund "oidc-provider@$oidc_provider"
fi

saml_idp=1.2.1
if ! grep -qs "\"version\": \"$saml_idp\"" target/test-tools/saml-idp/node_modules/saml-idp/package.json; then
  command -v npm >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm; }
  echo "installing: saml-idp@$saml_idp"
  mkdir -p target/test-tools/saml-idp
  # saml-idp names its samlp dependency by a GitHub URL, which no registry serves; the published samlp stands in.
  printf '{"private":true,"dependencies":{"saml-idp":"%s"},"overrides":{"samlp":"8.0.0"}}\n' "$saml_idp" >target/test-tools/saml-idp/package.json
  npm install --prefix target/test-tools/saml-idp --no-package-lock --no-audit --no-fund
fi

# Python packages the SOAP tests run (pinned): the spyne service and the zeep client, in a
# virtual environment in target/test-tools/spyne where the tests look. Python 3.13 removed
# `cgi`, which spyne 2.14 imports: legacy-cgi puts it back there; spyne_service.py patches
# the six spyne bundles for Python 3.12 and later.
soap_packages=(spyne==2.14.0 lxml==6.2.0 zeep==4.3.3 'legacy-cgi==2.6.4; python_version >= "3.13"')
if ! target/test-tools/spyne/bin/python -c 'import lxml, zeep, spyne; assert spyne.__version__ == "2.14.0"' 2>/dev/null; then
  # Debian ships venv's ensurepip in python3-venv.
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 python3-venv
  fi
  echo "installing: ${soap_packages[*]}"
  rm -rf target/test-tools/spyne
  python3 -m venv target/test-tools/spyne
  target/test-tools/spyne/bin/pip install --quiet --disable-pip-version-check "${soap_packages[@]}"
fi

# llmock (pinned), the LLM provider fake the ai_proxy tests run, in its own virtual
# environment in target/test-tools/llmock where the tests look.
if ! target/test-tools/llmock/bin/python -c 'import importlib.metadata as m; assert m.version("llmock") == "0.2.2"' 2>/dev/null; then
  echo "installing: llmock==0.2.2"
  rm -rf target/test-tools/llmock
  python3 -m venv target/test-tools/llmock
  target/test-tools/llmock/bin/pip install --quiet --disable-pip-version-check llmock==0.2.2
fi

# botocore (pinned), whose SigV4 signer checks every request the Bedrock fake of the ai_proxy
# tests receives, in its own virtual environment in target/test-tools/cloud-llm.
if ! target/test-tools/cloud-llm/bin/python -c 'import botocore; assert botocore.__version__ == "1.44.5"' 2>/dev/null; then
  echo "installing: botocore==1.44.5"
  rm -rf target/test-tools/cloud-llm
  python3 -m venv target/test-tools/cloud-llm
  target/test-tools/cloud-llm/bin/pip install --quiet --disable-pip-version-check botocore==1.44.5
fi

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
# `gantry/xslt` builds the binary the end-to-end tests run with the `xslt` policy (libxslt).
cargo clippy --workspace --all-targets --locked --features gantry/xslt -- -D warnings
# The binary as README's first command builds it: without the feature, needing only Rust.
cargo clippy -p gantry --bins --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked --features gantry/xslt
echo "== cargo doc"
RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps --locked --quiet
echo "all checks passed"
