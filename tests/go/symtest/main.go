// Command symtest allocates through a fixed call chain so that symbolization can be checked:
// main.main -> main.level1 -> main.level2 -> main.level3 -> main.newPoint, where newPoint is
// inlined into level3 and the others are not inlined.
//
// Usage: symtest [count]   (default 1000 allocations)
//
// It prints "SYMTEST <count> <checksum>" and exits 0 (or 1 if the runtime counted fewer heap
// allocations than count).
package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
)

// point is 32 bytes with a pointer, so it is a small "scan" allocation.
type point struct {
	x, y, z int64
	next    *point
}

// lastPoint makes every point escape to the heap.
var lastPoint *point

func newPoint(i int) *point {
	return &point{x: int64(i), y: int64(2 * i), z: int64(3 * i)} // SITE:newPoint
}

//go:noinline
func level3(i int) {
	lastPoint = newPoint(i) // SITE:level3
}

//go:noinline
func level2(i int) {
	level3(i)
}

//go:noinline
func level1(i int) {
	level2(i)
}

func main() {
	count := 1000
	if len(os.Args) > 1 {
		n, err := strconv.Atoi(os.Args[1])
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "usage: symtest [count]\n")
			os.Exit(2)
		}
		count = n
	}
	var checksum int64
	for i := 0; i < count; i++ {
		level1(i)
		checksum += lastPoint.x + lastPoint.y + lastPoint.z
	}
	// Guard against the compiler keeping the points on the stack.
	var stats runtime.MemStats
	runtime.ReadMemStats(&stats)
	if stats.Mallocs < uint64(count) {
		fmt.Fprintf(os.Stderr, "symtest: only %d heap allocations, expected at least %d\n", stats.Mallocs, count)
		os.Exit(1)
	}
	fmt.Printf("SYMTEST %d %d\n", count, checksum)
}
