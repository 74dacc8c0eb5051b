"""Write .dvc/plots/offline.html: an HTML template for `dvc plots show` with Vega inlined, so the page
draws without a network (DVC's own page loads vega, vega-lite and vega-embed from a CDN).

.dvc/config points `plots.html_template` at it. The versions are the ones DVC's renderer
(dvc-render) asks the CDN for; the files come from the npm registry (`npm pack`), so this needs
npm and the registry once; the committed template then works offline everywhere.

    python tools/dvc_plots_template.py
"""
from __future__ import annotations

import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGES = {"vega": "5.20.2", "vega-lite": "5.2.0", "vega-embed": "6.18.2"}   # dvc_render.vega.VegaRenderer.SCRIPTS
OUT = Path(__file__).resolve().parents[1] / ".dvc" / "plots" / "offline.html"

# DVC fills {plot_divs} and {refresh_tag}; there is deliberately no {scripts}, which would add the CDN tags.
PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC plots</title>
    <style>
        body {{ font-family: sans-serif; }}
        table {{ border-spacing: 15px; }}
    </style>
{scripts}
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def bundled_script(name: str, version: str, workdir: Path) -> str:
    subprocess.run(["npm", "pack", "--silent", f"{name}@{version}"], cwd=workdir, check=True, capture_output=True)
    with tarfile.open(workdir / f"{name}-{version}.tgz") as tar:
        code = tar.extractfile(f"package/build/{name}.min.js").read().decode()
        licence = tar.extractfile("package/LICENSE").read().decode()
    for marker in ("</script", "{plot_divs}", "{refresh_tag}", "{scripts}"):
        assert marker not in code, f"{name}: '{marker}' in the bundle would break the template"
    return f"<!-- {name} {version} (npm), its licence:\n{licence.replace('--', '- -')}-->\n<script>\n{code}\n</script>"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        scripts = "\n".join(bundled_script(name, version, Path(tmp)) for name, version in PACKAGES.items())
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(PAGE.format(scripts=scripts))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
