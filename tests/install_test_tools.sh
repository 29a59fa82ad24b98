#!/usr/bin/env bash
# Tools the serving tests drive from outside Python: the system Chromium (the web page test;
# browser builds that download themselves cannot be fetched everywhere we run) and a real
# Label Studio in its own venv (its Django pins clash with ours). Without them those tests
# skip, saying why. Run from the repository root.
set -uo pipefail
if ! command -v chromedriver >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        { apt-get update -q && apt-get install -y -q chromium chromium-driver; } >/dev/null 2>&1 \
            || echo "warning: apt could not install chromium; the web page test will skip" >&2
    else
        echo "warning: chromium/chromedriver missing (apt-get install chromium chromium-driver as root); the web page test will skip" >&2
    fi
fi
# Label Studio 1.23.2 asks for sentry-sdk>=2.16 with no ceiling; sentry-sdk 3.0 dropped an option
# it passes at start-up ("Unknown option 'send_default_pii'"), so the server would not start.
if [ ! -x .venv-labelstudio/bin/label-studio ]; then
    log=$(mktemp)
    { python3 -m venv .venv-labelstudio && .venv-labelstudio/bin/pip install -q --upgrade pip \
        && .venv-labelstudio/bin/pip install -q "label-studio==1.23.2" "sentry-sdk>=2.16,<3"; } >"$log" 2>&1 \
        || { tail -20 "$log" >&2; echo "warning: label-studio did not install; the Label Studio test will skip" >&2; }
    rm -f "$log"
fi
# a migrated Label Studio database the tests start from (migrating a new one takes half a minute)
if [ -x .venv-labelstudio/bin/label-studio ] && [ ! -f .venv-labelstudio/template/label_studio.sqlite3 ]; then
    LATEST_VERSION_CHECK=false .venv-labelstudio/bin/label-studio version --data-dir .venv-labelstudio/template >/dev/null 2>&1 \
        || echo "warning: Label Studio could not migrate its template database; its tests start from an empty one" >&2
fi
exit 0
