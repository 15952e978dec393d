from heaprelay.cli import main

main()
