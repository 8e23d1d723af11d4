package mitm

import "github.com/prometheus/client_golang/prometheus"

// Register registers the minter's metrics on reg: the leaves minted so far
// and the leaves the cache holds.
func (m *Minter) Register(reg prometheus.Registerer) {
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "sandpit_egress_leaves_minted_total",
			Help: "TLS leaf certificates minted (a key generated and a certificate signed); a leaf served from the cache is not counted.",
		}, func() float64 { return float64(m.Minted()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sandpit_egress_leaf_cache_entries",
			Help: "Minted leaves the LRU cache holds, at most --leaf-cache-size.",
		}, func() float64 { return float64(m.Len()) }),
	)
}

// Len returns how many leaves the cache holds.
func (m *Minter) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lru.Len()
}
