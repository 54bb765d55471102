//go:build race

package benchmarks

// raceEnabled: this test binary runs under the race detector, which makes
// every worker several times slower; TestAccuracy then hammers each key for
// a shorter time by default (the verdicts do not depend on it).
const raceEnabled = true
