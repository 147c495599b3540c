from csplugin.cli import main

main()
