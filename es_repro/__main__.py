from es_repro.main import main

main()
