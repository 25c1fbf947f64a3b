# Sourced by scripts run with sudo (scripts/demo, scripts/test): what they build and write in the
# checkout (target/, demo-output/, wire-format/fuzz/target) would otherwise be root's, and the
# user's next `cargo build` as themselves would fail on it. On exit, when run through sudo by
# the user who owns the checkout, those paths are given back to that user.
give_back() {
  local uid=${SUDO_UID:-} gid=${SUDO_GID:-}
  [[ -n $uid && -n $gid && $uid != 0 ]] || return 0
  [[ $(stat -c %u .) == "$uid" ]] || return 0
  local path
  for path in target demo-output wire-format/fuzz/target; do
    [[ -e $path ]] && chown -R "$uid:$gid" "$path" 2>/dev/null || true
  done
}
trap give_back EXIT
