from rockseg.cli import main

main()
