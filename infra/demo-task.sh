#!/usr/bin/env bash
# A demo task: some lines a second on stdout, warnings in colour on stderr, a progress bar, an exit code.
for i in $(seq 1 20); do
  echo "step $i: copying shard $i of 20 ($(date +%T.%N | cut -c1-12))"
  if (( i % 5 == 0 )); then printf '\033[33mwarning: shard %d is slow\033[0m\n' "$i" >&2; fi
  sleep 0.25
done
for p in 0 25 50 75 100; do printf '\rverifying %3d%%' "$p"; sleep 0.1; done
echo
echo "done"
