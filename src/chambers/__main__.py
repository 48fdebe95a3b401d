from chambers.cli import main

main()
