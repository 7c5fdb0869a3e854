//go:build !go1.24

package main

import (
	"fmt"
	"os"
)

// Before Go 1.24 there is no package weak: the program only says so, and exits 2.
func main() {
	fmt.Fprintln(os.Stderr, "weakdeath: needs Go 1.24 or later (package weak)")
	os.Exit(2)
}
