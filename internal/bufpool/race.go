//go:build race

package bufpool

// raceEnabled: the race detector sees only memory the Go runtime allocated,
// so a race build keeps its payloads on the heap, where it can check them.
const raceEnabled = true
