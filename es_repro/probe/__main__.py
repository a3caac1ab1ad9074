from es_repro.probe.run import main

main()
