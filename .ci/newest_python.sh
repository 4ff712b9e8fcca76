#!/usr/bin/env bash
# Prints the newest Python (3.11 or later) this machine can run: a python3.X on PATH, or one that
# pyenv installed without making it active. Prints nothing when there is none.
best="" best_version=0
candidates=$(compgen -c python3. | grep -E '^python3\.[0-9]+$' | sort -u)
for python in $candidates "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.*/bin/python3; do
  version=$("$python" -c 'import sys; print(100 * sys.version_info[0] + sys.version_info[1])' 2>/dev/null) || continue
  if [ "$version" -ge 311 ] && [ "$version" -gt "$best_version" ]; then
    best=$(command -v "$python" || echo "$python") best_version=$version
  fi
done
echo "$best"
