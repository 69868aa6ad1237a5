#!/usr/bin/env bash
# Refresh the vendored front-end assets from the npm registry (run by hand when upgrading; never at run time).
# Versions are pinned in package.json; the copies under app/static/vendor/ are committed.
# devDependencies are for tests only: axe-core goes to tests/e2e/vendor/ (read by the browser journeys from
# disk), never under app/static, so the app never serves it and the wheel never holds it.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp package.json "$work/"
(cd "$work" && npm install --no-audit --no-fund --ignore-scripts >/dev/null)
nhs="$work/node_modules/nhsuk-frontend/dist/nhsuk"
ver=$(node -p "require('$work/node_modules/nhsuk-frontend/package.json').version")
dest=app/static/vendor/nhsuk-frontend
rm -rf "$dest" && mkdir -p "$dest/assets"
cp -r "$nhs/assets/images" "$dest/assets/"
cp "$nhs/nhsuk-frontend-$ver.min.js" "$dest/nhsuk-frontend.min.js"
# The stock CSS loads the Frutiger web font from assets.nhs.uk (licensed for nhs.uk domains only) and
# images from /assets: drop the remote @font-face rules (the design system falls back to Arial) and make
# image URLs relative to the stylesheet, so the page never requests anything off its own origin.
python3 - "$nhs/nhsuk-frontend-$ver.min.css" "$dest/nhsuk-frontend.min.css" <<'PY'
import re, sys
css = open(sys.argv[1], encoding="utf-8").read()
css = re.sub(r"@font-face\{[^}]*assets\.nhs\.uk[^}]*\}", "", css)
css = css.replace("url(/assets/images/", "url(assets/images/")
assert "https://" not in css, "remote URL left in nhsuk-frontend CSS"
open(sys.argv[2], "w", encoding="utf-8").write(css)
PY
mkdir -p app/static/vendor/htmx
cp "$work/node_modules/htmx.org/dist/htmx.min.js" app/static/vendor/htmx/htmx.min.js
axe="$work/node_modules/axe-core"
mkdir -p tests/e2e/vendor
cp "$axe/axe.min.js" tests/e2e/vendor/axe.min.js
cp "$axe/LICENSE" tests/e2e/vendor/axe-core.LICENSE  # MPL-2.0
echo "vendored nhsuk-frontend $ver and htmx $(node -p "require('$work/node_modules/htmx.org/package.json').version")"
echo "vendored axe-core $(node -p "require('$axe/package.json').version") for the browser journeys (tests/e2e/vendor)"
