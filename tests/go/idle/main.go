// Command idle is a long-running target for attaching to a running process (memtrace --pid):
// it prints "READY <pid>", then allocates at a steady rate through one marked site, 1000
// objects of 64 bytes every 10 ms, until it receives SIGTERM or SIGINT; then it prints "BYE"
// and exits 0.
//
// Usage:
//
//	idle [-duration D]   (default 0: run until signalled; otherwise stop by itself after D)
//
// Output on stdout:
//
//	READY <pid>      once, before the first allocation
//	BYE              when stopped by a signal or by -duration
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

const (
	allocsPerTick = 1000
	objectSize    = 64
	tickInterval  = 10 * time.Millisecond
	ringSize      = 4096
)

// recent keeps the latest objects reachable, so the allocations cannot be optimized away.
var recent [ringSize][]byte

//go:noinline
func tick(first int) {
	for i := 0; i < allocsPerTick; i++ {
		b := make([]byte, objectSize) // SITE:tick
		b[0] = byte(i)
		recent[(first+i)%ringSize] = b
	}
}

func main() {
	duration := flag.Duration("duration", 0, "stop after this long (0: run until SIGTERM or SIGINT)")
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: idle [-duration D]")
		os.Exit(2)
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	var timeout <-chan time.Time
	if *duration > 0 {
		timeout = time.After(*duration)
	}
	ticker := time.NewTicker(tickInterval)
	defer ticker.Stop()

	// os.Stdout is unbuffered: the line is written before the first allocation.
	fmt.Printf("READY %d\n", os.Getpid())
	for ticks := 0; ; ticks++ {
		tick(ticks * allocsPerTick)
		select {
		case <-ticker.C:
		case <-stop:
			fmt.Println("BYE")
			return
		case <-timeout:
			fmt.Println("BYE")
			return
		}
	}
}
