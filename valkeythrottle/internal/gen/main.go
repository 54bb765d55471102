// Command gen writes the files of valkeythrottle that are made of
// rueidisthrottle's (see package rewrite). Run it with go generate in
// valkeythrottle/.
package main

import (
	"log"
	"os"
	"path/filepath"

	"github.com/dthrottle/throttle/valkeythrottle/internal/rewrite"
)

func main() {
	for _, name := range rewrite.Files {
		src, err := os.ReadFile(filepath.Join("..", "rueidisthrottle", name))
		if err != nil {
			log.Fatal(err)
		}
		out, err := rewrite.Rewrite(name, src)
		if err != nil {
			log.Fatal(err)
		}
		if err := os.WriteFile(name, out, 0o644); err != nil {
			log.Fatal(err)
		}
	}
}
