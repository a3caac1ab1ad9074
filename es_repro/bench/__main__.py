from es_repro.bench.throughput import main

main()
