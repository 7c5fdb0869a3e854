// Command stress grows goroutine stacks hard while allocating, to check that tracing does
// not break the Go runtime's stack copying: each task recurses 200-2000 levels deep with
// frames of about 128 bytes and allocates at every level; up to 64 tasks run at once, each on
// a new goroutine, started continuously as others finish; runtime.GC() runs every 100 tasks.
//
// Usage:
//
//	stress [tasks]   (default 20000: about 1 s untraced, 22 million allocations)
//
// Output on stdout, deterministic for a given task count:
//
//	TASKS <tasks>
//	ALLOCS <n>        allocations made at the frame site (one per recursion level)
//	CHECKSUM <hex>    combines every task's result in task order
//
// It exits 0, or 1 if the runtime counted fewer heap allocations than ALLOCS.
package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
)

const (
	maxConcurrent = 64
	minDepth      = 200
	maxDepth      = 2000
	gcEveryTasks  = 100
)

// frameNode is allocated at every recursion level and linked to its caller's node. The deepest
// level publishes the chain in lastChain, so every node escapes to the heap.
type frameNode struct {
	value  uint64
	parent *frameNode
}

// descend recurses depth levels. Its 128-byte pad array keeps the frames large, so the
// goroutine's stack has to grow (and be copied) several times.
//
//go:noinline
func descend(depth int, seed uint64, parent *frameNode) uint64 {
	var pad [16]uint64
	for i := range pad {
		pad[i] = seed ^ uint64(i*depth+1)
	}
	node := &frameNode{value: pad[depth%16], parent: parent} // SITE:frame
	if depth == 0 {
		lastChain.Store(node)
		var sum uint64
		for n := node; n != nil; n = n.parent {
			sum = sum*1099511628211 + n.value
		}
		return sum
	}
	return descend(depth-1, seed*6364136223846793005+1442695040888963407, node) ^ pad[(depth*7)%16]
}

// lastChain is the most recently completed chain of frame nodes.
var lastChain atomic.Pointer[frameNode]

func taskDepth(task int) int {
	x := uint64(task)*0x9e3779b97f4a7c15 + 0x632be59bd9b4e019
	x ^= x >> 29
	return minDepth + int(x%uint64(maxDepth-minDepth+1))
}

func main() {
	tasks := 20000
	if len(os.Args) > 2 {
		fmt.Fprintln(os.Stderr, "usage: stress [tasks]")
		os.Exit(2)
	}
	if len(os.Args) == 2 {
		n, err := strconv.Atoi(os.Args[1])
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "stress: tasks must be a positive integer, not %q\n", os.Args[1])
			os.Exit(2)
		}
		tasks = n
	}

	results := make([]uint64, tasks)
	slots := make(chan struct{}, maxConcurrent)
	var wg sync.WaitGroup
	var allocs uint64
	for task := 0; task < tasks; task++ {
		if task > 0 && task%gcEveryTasks == 0 {
			runtime.GC()
		}
		depth := taskDepth(task)
		allocs += uint64(depth + 1)
		slots <- struct{}{}
		wg.Add(1)
		go func(task, depth int) {
			defer wg.Done()
			results[task] = descend(depth, uint64(task), nil)
			<-slots
		}(task, depth)
	}
	wg.Wait()

	var checksum uint64 = 14695981039346656037
	for _, result := range results {
		checksum = (checksum ^ result) * 1099511628211
	}
	// Guard against the compiler keeping the frame nodes on the stack.
	var stats runtime.MemStats
	runtime.ReadMemStats(&stats)
	if stats.Mallocs < allocs {
		fmt.Fprintf(os.Stderr, "stress: only %d heap allocations, expected at least %d\n", stats.Mallocs, allocs)
		os.Exit(1)
	}
	fmt.Printf("TASKS %d\nALLOCS %d\nCHECKSUM %016x\n", tasks, allocs, checksum)
}
