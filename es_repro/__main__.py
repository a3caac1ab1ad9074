from es_repro.cli import main

main()
