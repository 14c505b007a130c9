# Shell helpers the bench scripts share (sourced, not run).

# CPU ticks of one process tree (reaped children included).
tree_ticks() {
    local p total=0 rest
    for p in $(ps -e -o pid=,ppid= | awk -v root="$1" '
        { parent[$1] = $2; all[NR] = $1 }
        END { keep[root] = 1; changed = 1
              while (changed) { changed = 0
                  for (i in all) { p = all[i]; if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } } }
              for (p in keep) print p }'); do
        rest=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        rest=${rest##*) }
        total=$((total + $(awk '{print $12 + $13 + $14 + $15}' <<<"$rest")))
    done
    echo "$total"
}

# cpu_us_per_request TICKS WRK_OUTPUT: CPU microseconds (TICKS of CPU time
# spent) per request wrk reported in WRK_OUTPUT.
cpu_us_per_request() {
    awk -v t="$1" -v hz="$(getconf CLK_TCK)" \
        '/requests in/ { n = $1 } END { printf "%.1f", t / hz * 1e6 / n }' "$2"
}
